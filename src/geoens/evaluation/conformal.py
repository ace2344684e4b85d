"""Upper sets and conformal quantiles: the arithmetic of calibrated regions (DESIGN section 9).

For one image, ``P`` on the atom groups, ``A(x)`` the area of the upper set ``{y : P(y) >= P(x)}`` and
``M(x)`` its probability mass (``P`` normalised to mass 1 over the sphere). Upper sets are computed once per
image by sorting the groups by decreasing ``P`` and taking cumulative area and mass; a tie run is always
taken whole. The score of the truth and the size of any region are read from these same sums (vectorised
binary searches), so the coverage of a region and the score it was calibrated with can never disagree by
rounding. The threshold of a nominal coverage ``1 - alpha`` is the ``ceil((n + 1)(1 - alpha))``-th smallest
calibration score (:func:`conformal_quantile`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from geoens.core.constants import GCD_RADIUS_KM
from geoens.core.types import BoolArray, FloatArray, IntArray


@dataclass(frozen=True)
class UpperSets:
    """Upper sets of a batch of images, groups sorted by decreasing ``P`` (``images x groups``).

    The upper set of sorted position ``k`` ends at the end of ``k``'s tie run; its area and mass are the
    cumulative sums there. Every lookup is a vectorised binary search (``O(log groups)`` per image).

    Attributes:
        order: Group at each sorted position.
        p_sorted: ``P`` in sorted order (non-increasing along a row).
        cum_area: Cumulative area (km^2) along the sorted positions.
        cum_mass: Cumulative ``P * area`` along the sorted positions.
        z: Total mass of each image (``cum_mass`` at the last position); 0 when every ``P`` is 0.

    """

    order: IntArray
    p_sorted: FloatArray
    cum_area: FloatArray
    cum_mass: FloatArray
    z: FloatArray

    @property
    def n_groups(self) -> int:
        """Groups per image."""
        return int(self.p_sorted.shape[1])

    def mass_at(self, rows: IntArray, pos: IntArray) -> FloatArray:
        """``M`` at sorted positions: cumulative mass over the total (exactly 1 from the last ``P > 0``)."""
        z = self.z[rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(z > 0, self.cum_mass[rows, pos] / np.where(z > 0, z, 1.0), 1.0)

    def count_at_least(self, p: FloatArray) -> IntArray:
        """Number of sorted positions with ``P >= p`` (per image)."""
        return _leading(self.p_sorted.shape, lambda r, k: self.p_sorted[r, k] >= p[r])

    def whole_runs(self, c: IntArray) -> IntArray:
        """Shrink each prefix length ``c`` to whole tie runs.

        The result is the number of positions with ``P > P[c-1]`` when position ``c`` continues the tie
        run of ``c - 1``, else ``c``.
        """
        n, g = self.p_sorted.shape
        rows = np.arange(n)
        last = np.maximum(c - 1, 0)
        v = self.p_sorted[rows, last]
        nxt = self.p_sorted[rows, np.minimum(c, g - 1)]
        cut = (c > 0) & (c < g) & (nxt == v)
        if not cut.any():
            return c
        strictly = _leading(self.p_sorted.shape, lambda r, k: self.p_sorted[r, k] > v[r])
        return np.where(cut, strictly, c)

    def area_of(self, c: IntArray) -> FloatArray:
        """Area of the first ``c`` sorted positions (0 for ``c = 0``)."""
        rows = np.arange(c.size)
        return np.where(c > 0, self.cum_area[rows, np.maximum(c - 1, 0)], 0.0)


def _leading(shape: tuple[int, ...], pred: Callable[[IntArray, IntArray], BoolArray]) -> IntArray:
    """Per row, the length of the prefix where ``pred(row, position)`` holds, by binary search.

    ``pred`` must be monotone along a row (True, then False); all rows are searched at once.
    """
    n, g = int(shape[0]), int(shape[1])
    lo = np.zeros(n, dtype=np.int64)
    hi = np.full(n, g, dtype=np.int64)
    rows = np.arange(n)
    while True:
        act = np.flatnonzero(lo < hi)
        if act.size == 0:
            return lo
        mid = (lo[act] + hi[act]) // 2
        ok = pred(rows[act], mid)
        lo[act] = np.where(ok, mid + 1, lo[act])
        hi[act] = np.where(ok, hi[act], mid)


def upper_sets(P: FloatArray, area: FloatArray, threads: int = 1) -> UpperSets:
    """Upper sets of each image of a ``groups x images`` score matrix.

    Args:
        P: ``groups x images`` scores ``>= 0`` (any scale per image; mass is normalised per image).
        area: Area of each group (km^2).
        threads: Threads sorting disjoint blocks of images (numpy releases the GIL in sorts and sums).

    """
    g, n = P.shape
    order = np.empty((n, g), dtype=np.int64)
    ps = np.empty((n, g), dtype=np.float64)
    cum_area = np.empty((n, g), dtype=np.float64)
    cum_mass = np.empty((n, g), dtype=np.float64)

    def block(rows: slice) -> None:
        pt = np.ascontiguousarray(P[:, rows].T)
        o = np.argsort(-pt, axis=1)  # the order inside a tie run does not matter: runs are taken whole
        order[rows] = o
        p = np.take_along_axis(pt, o, axis=1)
        ps[rows] = p
        a = area[o]
        np.cumsum(a, axis=1, out=cum_area[rows])
        np.cumsum(np.multiply(p, a, out=a), axis=1, out=cum_mass[rows])

    k = max(1, min(int(threads), n // 64))
    bounds = np.linspace(0, n, k + 1).astype(int)
    parts = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if k == 1:
        block(slice(0, n))
    else:
        with ThreadPoolExecutor(k) as pool:
            list(pool.map(block, parts))
    z = cum_mass[:, -1].copy() if g else np.zeros(n)
    return UpperSets(order, ps, cum_area, cum_mass, z)


def hit_scores(us: UpperSets, P: FloatArray, gt_group: IntArray) -> tuple[FloatArray, FloatArray, BoolArray]:
    """``(A(g), M(g), P(g) == 0)`` of each image's ground-truth group, read from its upper sets."""
    n = gt_group.size
    thr = P[gt_group, np.arange(n)]
    count = us.count_at_least(thr)  # sorted positions up to the end of g's tie run
    rows = np.arange(n)
    pos = np.maximum(count - 1, 0)
    return us.cum_area[rows, pos], us.mass_at(rows, pos), thr == 0.0


def region_counts(us: UpperSets, kind: str, thresholds: FloatArray) -> IntArray:
    """Sorted positions in each image's region ``{x : A(x) <= t}`` (fixed) or ``{x : M(x) <= t}`` (adaptive).

    Raises:
        ValueError: On another kind.

    """
    t = np.asarray(thresholds, dtype=np.float64)
    if kind == "fixed":
        c = _leading(us.p_sorted.shape, lambda r, k: us.cum_area[r, k] <= t[r])
    elif kind == "adaptive":
        c = _leading(us.p_sorted.shape, lambda r, k: us.mass_at(r, k) <= t[r])
    else:
        raise ValueError(f"region kind must be fixed or adaptive, got {kind!r}")
    return us.whole_runs(c)


def region_areas(us: UpperSets, kind: str, thresholds: FloatArray) -> FloatArray:
    """Area (km^2) of each image's calibrated region of kind ``fixed`` or ``adaptive``."""
    return us.area_of(region_counts(us, kind, thresholds))


def cap_region_km2(radius_km: FloatArray | float, earth_radius_km: float = GCD_RADIUS_KM) -> FloatArray:
    """Area of a geodesic cap of each radius; the whole sphere from ``pi R`` on (and for ``inf``)."""
    r = np.asarray(radius_km, dtype=np.float64)
    whole = 4.0 * math.pi * earth_radius_km**2
    rr = np.where(np.isfinite(r), np.minimum(r, math.pi * earth_radius_km), 0.0)
    out = 2.0 * math.pi * earth_radius_km**2 * (1.0 - np.cos(rr / earth_radius_km))
    return np.where(np.isfinite(r) & (r < math.pi * earth_radius_km), out, whole)


def conformal_quantile(scores: npt.ArrayLike, level: float) -> float:
    """The ``ceil((n + 1) level)``-th smallest score (``inf`` when that exceeds ``n``, or ``n = 0``).

    Raises:
        ValueError: If ``level`` is not in ``(0, 1)`` or a score is NaN.

    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"coverage level must be in (0, 1), got {level}")
    s = np.asarray(scores, dtype=np.float64)
    if np.any(np.isnan(s)):
        raise ValueError("conformal scores must not be NaN")
    n = s.size
    k = math.ceil((n + 1) * level - 1e-9)  # guard against (n+1)*level landing an ulp above an integer
    if k > n:
        return math.inf
    return float(np.partition(s, k - 1)[k - 1])
