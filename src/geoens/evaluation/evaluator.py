"""The evaluator: every method of the base models on batches of images (Alg. 2-3 and the grid top-1).

:func:`evaluate_groups` picks the engine of a method's groups: the threshold form of
:mod:`geoens.evaluation.rva_fast` when they include ``s2``, else the dense form of
:mod:`geoens.evaluation.rva`. :class:`Evaluator` caches the groups, their atoms and run layouts per family
set, computes the Alg. 1 scores of a batch and runs the methods (numpy or torch backend, optionally several
methods at a time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from geoens.core.constants import FAMILIES
from geoens.core.types import FloatArray, IntArray
from geoens.evaluation import rva_fast
from geoens.evaluation.methods import Method, scores_t, urban_prior_scores
from geoens.evaluation.rva import (
    DEFAULT_CHUNK_ELEMENTS,
    Groups,
    MethodResult,
    evaluate_groups_dense,
    group_atoms,
    group_csr,
)
from geoens.evaluation.rva_fast import RunLayout
from geoens.geo.atoms import AtomTable
from geoens.geo.lookup import Lookup


def evaluate_groups(
    groups: Groups,
    scores_t: Mapping[str, FloatArray],
    gt_atom: IntArray,
    total_area: float,
    lookup: Lookup | None = None,
    group_atoms_csr: tuple[IntArray, IntArray] | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    layout: RunLayout | None = None,
) -> MethodResult:
    """Alg. 2-3 (and the grid top-1 when ``lookup`` is given) for a batch of images on one method's groups.

    Uses the threshold form of :mod:`geoens.evaluation.rva_fast` (no product is materialised) when the groups
    include ``s2``, else :func:`evaluate_groups_dense`.

    Args:
        groups: The method's groups.
        scores_t: Family -> ``(classes + 1) x batch`` Alg. 1 class scores (:meth:`Evaluator.scores`).
        gt_atom: Atom of each image's ground-truth pixel.
        total_area: Area of the sphere (km^2), the area of a zero-probability image.
        lookup: Pixel lookup for the top-1; ``None`` skips the top-1 (NaN).
        group_atoms_csr: ``(order, start)`` atoms of each group (``order[start[g]:start[g+1]]``), for the
            top-1 fallback; computed when needed.
        chunk_elements: Bound on ``groups x images`` of one matrix (dense form only).
        layout: The groups' run layout (:func:`geoens.evaluation.rva_fast.run_layout`), computed when not
            given.

    """
    if "s2" not in groups.families:
        return evaluate_groups_dense(
            groups, scores_t, gt_atom, total_area, lookup, group_atoms_csr, chunk_elements
        )
    if layout is None:
        layout = rva_fast.run_layout(groups, rva_fast.LAYOUT_BLOCK_ROWS)
    return rva_fast.evaluate_numpy(groups, layout, scores_t, gt_atom, total_area, lookup, group_atoms_csr)


@dataclass
class Evaluator:
    """Evaluates every method of the given bases on batches of images.

    Attributes:
        atoms: The atom table.
        n_classes: Predictor classes per family (``s2`` = number of fine cells).
        lookup: Pixel lookup (atom index) for ground-truth atoms and the top-1.
        total_area: Area of the sphere, ``4 pi R^2``.
        absorption: ``(cells, targets)`` of the absorbed S2 cells.
        chunk_elements: Bound on one ``images x groups`` matrix (dense forms).
        backend: ``numpy`` (threshold form) or ``torch`` (dense form on ``device``), see
            :mod:`geoens.evaluation.rva_fast`; both give the same results.
        device: Torch device of the torch backend (default: CUDA when present, else CPU).

    """

    atoms: AtomTable
    n_classes: dict[str, int]
    lookup: Lookup
    total_area: float
    absorption: tuple[IntArray, IntArray] = field(
        default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0, np.int64))
    )
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
    backend: str = "numpy"
    device: str | None = None
    _groups: dict[tuple[str, ...], Groups] = field(default_factory=dict, repr=False)
    _csr: dict[tuple[str, ...], tuple[IntArray, IntArray]] = field(default_factory=dict, repr=False)
    _layouts: dict[tuple[str, ...], RunLayout] = field(default_factory=dict, repr=False)
    _torch: dict[tuple[str, ...], rva_fast.TorchGroups] = field(default_factory=dict, repr=False)
    class_area: dict[str, FloatArray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in ("numpy", "torch"):
            raise ValueError(f"evaluation backend must be 'numpy' or 'torch', got {self.backend!r}")
        for f in FAMILIES:
            self.class_area[f] = self.atoms.class_areas(f, self.n_classes[f])

    def groups(self, families: tuple[str, ...]) -> Groups:
        """Return the (cached) groups of a family set."""
        if families not in self._groups:
            self._groups[families] = group_atoms(self.atoms, families, self.n_classes)
        return self._groups[families]

    def scores(
        self, probs: Mapping[str, npt.ArrayLike], ids: Sequence[str] | None = None
    ) -> dict[str, FloatArray]:
        """Alg. 1 class scores per family, ``(classes + 1) x images`` (transposed; last row: label -1).

        Raw predictor outputs are renormalised in float64; S2 probabilities are then absorbed.
        """
        out = {}
        for f, p in probs.items():
            out[f] = scores_t(p, self.class_area[f], self.absorption if f == "s2" else None, f, ids)
        return out

    def urban_scores(self, batch: int) -> FloatArray:
        """Alg. 1 scores of the constant urban prior, ``(classes + 1) x batch``."""
        return np.repeat(urban_prior_scores(self.class_area["ls"])[:, None], batch, axis=1)

    def evaluate_many(
        self,
        methods: Sequence[Method],
        scores: Mapping[str, FloatArray],
        gt_atom: IntArray,
        top1: bool = True,
        threads: int = 1,
    ) -> list[MethodResult]:
        """:meth:`evaluate` for several methods, ``threads`` of them at a time (numpy releases the GIL).

        Each method is computed whole by one thread, so the results do not depend on ``threads``.
        """
        for m in methods:  # caches first, one thread
            self.evaluate(m, {f: s[:, :0] for f, s in scores.items()}, gt_atom[:0], top1)
        if threads <= 1 or len(methods) <= 1:
            return [self.evaluate(m, scores, gt_atom, top1) for m in methods]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(lambda m: self.evaluate(m, scores, gt_atom, top1), methods))

    def evaluate(
        self,
        method: Method,
        scores: Mapping[str, FloatArray],
        gt_atom: IntArray,
        top1: bool = True,
    ) -> MethodResult:
        """Alg. 2-3 and the grid top-1 of one method on a batch (``scores`` from :meth:`scores`)."""
        sc = {f: scores[f] for f in method.families if not (f == "ls" and method.urban_prior)}
        if method.urban_prior:
            sc["ls"] = self.urban_scores(gt_atom.size)
        fams = method.families
        g = self.groups(fams)
        if top1 and fams not in self._csr:
            self._csr[fams] = group_csr(g)
        lookup = self.lookup if top1 else None
        if self.backend == "torch":
            dev = rva_fast.torch_device(self.device)
            if fams not in self._torch:
                self._torch[fams] = rva_fast.torch_groups(g, dev)
            return rva_fast.evaluate_torch(
                g, self._torch[fams], sc, gt_atom, self.total_area, lookup, self._csr.get(fams),
                self.chunk_elements, dev,
            )  # fmt: skip
        if "s2" in fams and fams not in self._layouts:
            self._layouts[fams] = rva_fast.run_layout(g, rva_fast.LAYOUT_BLOCK_ROWS)
        return evaluate_groups(
            g,
            sc,
            gt_atom,
            self.total_area,
            lookup=lookup,
            group_atoms_csr=self._csr.get(fams),
            chunk_elements=self.chunk_elements,
            layout=self._layouts.get(fams),
        )
