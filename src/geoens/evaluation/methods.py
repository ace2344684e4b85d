"""Methods (ensembles of a base model with attribute families) and Alg. 1, the per-family class scores.

A method multiplies the scores of its families in the fixed order :data:`geoens.core.constants.FAMILIES`.
Alg. 1 turns a predictor's probabilities into scores per unit area: ``P_f(j) = p_f[j] / area_f(j)`` after
renormalising the probabilities in float64 and, for S2, absorbing the probability of absorbed cells onto the
cells receiving them. The LS urban prior replaces the LS predictor by a constant uniform over urban land.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from geoens.core.constants import BASE_MODELS, DISPLAY_NAMES, FAMILIES, LS_URBAN_BUCKETS, METHOD_VARIANTS
from geoens.core.types import FloatArray, IntArray
from geoens.geo.s2mask import apply_absorption


@dataclass(frozen=True)
class Method:
    """One ensemble of a base model with attribute families.

    Attributes:
        base: Base model key (``geoest`` or ``geoclip``).
        suffix: Variant suffix of :data:`~geoens.core.constants.METHOD_VARIANTS` (``""``, ``"+LS"``, ...).
        families: Families multiplied, in the fixed order of :data:`~geoens.core.constants.FAMILIES`.
        urban_prior: Whether LS is the constant urban prior instead of the LS predictor.

    """

    base: str
    suffix: str
    families: tuple[str, ...]
    urban_prior: bool = False

    @property
    def name(self) -> str:
        """Display name, e.g. ``GeoEst.+LS``."""
        return method_name(self.base, self.suffix)


def method_name(base: str, suffix: str) -> str:
    """Display name of a method: the base's display name followed by the variant suffix."""
    return f"{DISPLAY_NAMES.get(base, base)}{suffix}"


def own_top1_name(base: str) -> str:
    """Name the method of a base model's own top-1 (its argmax cell's mean location): ``GeoEst. (cell)``."""
    return f"{DISPLAY_NAMES.get(base, base)} (cell)"


def ordered_bases(present: Iterable[str]) -> list[str]:
    """The base models among ``present`` in table order: the built-in ones first, then the others sorted."""
    names = set(present)
    return [b for b in BASE_MODELS if b in names] + sorted(names - set(BASE_MODELS))


def distance_name(base: str) -> str:
    """Name the exact distance-ranking row of a ``point`` model (area: the cap of radius its error)."""
    return f"{DISPLAY_NAMES.get(base, base)} (distance)"


def all_methods(bases: Sequence[str] = BASE_MODELS) -> list[Method]:
    """Every method of :data:`~geoens.core.constants.METHOD_VARIANTS` for each base model, in table order."""
    out = []
    for b in bases:
        for suffix, extra, urban in METHOD_VARIANTS:
            fams = tuple(f for f in FAMILIES if f == "s2" or f in extra)
            out.append(Method(b, suffix, fams, urban))
    return out


def method_order(bases: Sequence[str] = BASE_MODELS, distance: bool = False) -> list[str]:
    """List method names in table order.

    Each base's variants, then its own top-1 and, with ``distance``, its distance ranking (the extra row of an
    external ``point`` model).
    """
    out = []
    for b in bases:
        extra = [distance_name(b)] if distance else []
        out += [m.name for m in all_methods([b])] + [own_top1_name(b), *extra]
    return out


def normalise_probs(
    probs: npt.ArrayLike, what: str = "probs", ids: Sequence[str] | None = None
) -> FloatArray:
    """Cast a ``batch x classes`` probability matrix to float64 and renormalise every row to sum 1.

    Raises:
        ValueError: Naming ``what`` and the image if a row has a negative or non-finite value or sums to 0.

    """
    p = np.array(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"{what}: expected a 2-d batch x classes array, got shape {p.shape}")
    bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1)
    s = p.sum(axis=1)
    bad |= ~(s > 0)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        who = ids[i] if ids is not None else f"row {i}"
        raise ValueError(f"{what}: image {who}: probabilities must be finite, >= 0 and not all zero")
    p /= s[:, None]
    return p


def absorb(probs: FloatArray, cells: npt.ArrayLike, targets: npt.ArrayLike) -> FloatArray:
    """Move the probability of absorbed S2 cells onto the cells receiving them (row sums conserved).

    Delegates to :func:`geoens.geo.s2mask.apply_absorption` so that every stage absorbs the same way; absorbed
    cells' columns become 0.

    Raises:
        ValueError: If a cell or target is outside the predictor's classes.

    """
    c = np.asarray(cells, dtype=np.int64)
    if c.size == 0:
        return probs
    table = pd.DataFrame({"cell": c, "target": np.asarray(targets, dtype=np.int64)})
    try:
        return np.asarray(apply_absorption(probs, table), dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"absorption table: {exc} (the predictor has {probs.shape[1]} classes)") from exc


def family_scores(p: FloatArray, class_area: FloatArray) -> FloatArray:
    """Alg. 1 per class: ``p[j] / area_f(j)`` with a trailing zero column for the label -1.

    Classes with no area own no pixel and score 0.
    """
    b, c = p.shape
    if c != class_area.size:
        raise ValueError(f"{c} probabilities for {class_area.size} classes")
    out = np.zeros((b, c + 1), dtype=np.float64)
    has = class_area > 0
    out[:, :c][:, has] = p[:, has] / class_area[has]
    return out


def scores_t(
    probs: npt.ArrayLike,
    class_area: FloatArray,
    absorption: tuple[IntArray, IntArray] | None = None,
    family: str = "probs",
    ids: Sequence[str] | None = None,
) -> FloatArray:
    """:func:`normalise_probs`, :func:`absorb` and :func:`family_scores` fused, transposed: ``(c + 1) x b``.

    The same roundings in the same order (row sum, division by it, absorbed columns added onto their
    targets, division by the class area), in about four passes over the batch instead of a dozen.

    Raises:
        ValueError: As the three functions (naming ``family`` and the image).

    """
    p = np.array(probs, dtype=np.float64)
    what = f"{family} predictions"
    if p.ndim != 2:
        raise ValueError(f"{what}: expected a 2-d batch x classes array, got shape {p.shape}")
    b, c = p.shape
    if c != class_area.size:
        raise ValueError(f"{what}: {c} classes, expected {class_area.size}")
    s = p.sum(axis=1)
    bad = ~np.isfinite(s) | ~(s > 0)
    if b:
        bad |= ~(p.min(axis=1) >= 0)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        who = ids[i] if ids is not None else f"row {i}"
        raise ValueError(f"{what}: image {who}: probabilities must be finite, >= 0 and not all zero")
    p /= s[:, None]
    if absorption is not None and np.asarray(absorption[0]).size:
        cell = np.asarray(absorption[0], dtype=np.int64)
        target = np.asarray(absorption[1], dtype=np.int64)
        if cell.min() < 0 or target.min() < 0 or cell.max() >= c or target.max() >= c:
            raise ValueError(
                f"absorption table: absorption table refers to cells outside 0..{c - 1} "
                f"(the predictor has {c} classes)"
            )
        order = np.argsort(target, kind="stable")  # as geoens.geo.s2mask.apply_absorption
        uniq, starts = np.unique(target[order], return_index=True)
        sums = np.add.reduceat(p[:, cell[order]], starts, axis=1)
        p[:, cell] = 0.0
        p[:, uniq] += sums
    out = np.empty((c + 1, b), dtype=np.float64)
    has = class_area > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(p.T, np.where(has, class_area, 1.0)[:, None], out=out[:c])
    out[:c][~has] = 0.0
    out[c] = 0.0
    return out


def urban_prior_probs(ls_class_area: FloatArray) -> FloatArray:
    """Return the LS urban prior ``q_j = area(j) / (area(medium) + area(high))`` (urban buckets, else 0).

    Raises:
        ValueError: If the urban buckets have no area.

    """
    q = np.zeros(ls_class_area.size, dtype=np.float64)
    urban = list(LS_URBAN_BUCKETS)
    tot = float(ls_class_area[urban].sum())
    if not tot > 0:
        raise ValueError("urban prior: the LS medium and high buckets have no area")
    q[urban] = ls_class_area[urban] / tot
    return q


def urban_prior_scores(ls_class_area: FloatArray) -> FloatArray:
    """Alg. 1 class scores of the urban prior: ``q_j / area(j) = 1 / (area(medium) + area(high))``.

    The value is computed once and shared by both urban buckets, so that the prior is exactly uniform over
    urban land (``q_j / area(j)`` evaluated per bucket could differ in the last bit). Trailing zero column
    for the label -1, as :func:`family_scores`.
    """
    urban = list(LS_URBAN_BUCKETS)
    urban_prior_probs(ls_class_area)  # validates
    out = np.zeros(ls_class_area.size + 1, dtype=np.float64)
    out[urban] = 1.0 / float(ls_class_area[urban].sum())
    return out
