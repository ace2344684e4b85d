"""Ensembling and Recall-vs-Area evaluation on atoms (the paper's Algorithms 1-3, DESIGN section 4).

The ensembled score ``P`` of a method is constant on every *atom* (a set of pixels sharing one tuple of
family labels), so Algorithms 1-3 run on the atom table instead of ``H x W`` rasters:

* Alg. 1: ``P_f(atom) = p_f[label_f] / area_f(label_f)`` (0 where the label is -1), ``area_f(j)`` = the sum of
  the areas of the atoms labelled ``j`` (:mod:`geoens.evaluation.methods`).
* Alg. 2: ``P = P_s2 * P_ls * P_lc`` in float64, multiplied in the fixed family order
  :data:`geoens.core.constants.FAMILIES`, so that a raster implementation that multiplies in the same order
  gives bitwise-identical values.
* Alg. 3: ``area = sum of the areas of the atoms with P >= P(g)``, ``g`` the atom of the ground-truth pixel.
  ``P(g) = 0`` gives the whole sphere and the ``zero_prob`` flag.

For speed each method works on the distinct label tuples of *its own* families (the base method only sees
S2 cells), and images are processed in batches: a matrix ``images x groups`` bounded by ``chunk_elements``.
This module holds the groups, the per-image results and the dense engine; :mod:`geoens.evaluation.rva_fast`
the threshold-form and torch engines; :mod:`geoens.evaluation.evaluator` the evaluator that picks one.

Grid top-1 of an image and method: the highest-``P`` region's area-weighted spherical centroid (the
normalised sum of the atoms' ``sx, sy, sz``) when the atom of the pixel holding that point belongs to the
region; otherwise the centre of the region's pixel nearest to the centroid (largest dot product of unit
vectors; ties go to the lowest row-major pixel index). The region's pixels are read from the atom index
raster, so the fallback is exact rather than limited to the atoms' representative points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from geoens.core.constants import FAMILIES
from geoens.core.grid import xyz_to_latlon
from geoens.core.types import BoolArray, FloatArray, IntArray
from geoens.geo.atoms import AtomTable
from geoens.geo.lookup import Lookup

#: Default bound on the number of float64 elements of one ``images x groups`` matrix (32 MB).
DEFAULT_CHUNK_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------------------------------
# Groups: the atoms collapsed to a method's families
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Groups:
    """Atoms collapsed to the distinct label tuples of some families.

    Groups are ordered by their attribute classes (LS, LC), then by S2 cell, so that the groups sharing one
    attribute combination form a contiguous run: Alg. 2 then needs one gather (S2) and per-run scalings.

    Attributes:
        families: The families.
        index: Family -> index of each group's class into the score matrix (label -1 -> the zero column).
        area: Area of each group (km^2).
        sxyz: ``G x 3`` sums of area times unit vectors.
        of_atom: Group of each atom.
        runs: ``(start, stop, {attribute family: class index})`` of each run of equal attribute classes.

    """

    families: tuple[str, ...]
    index: dict[str, IntArray]
    area: FloatArray
    sxyz: FloatArray
    of_atom: IntArray
    runs: tuple[tuple[int, int, dict[str, int]], ...] = ()

    @property
    def n(self) -> int:
        """Number of groups."""
        return int(self.area.size)


def group_atoms(atoms: AtomTable, families: Sequence[str], n_classes: Mapping[str, int]) -> Groups:
    """Collapse atoms to the distinct label tuples of ``families``.

    Args:
        atoms: The atom table.
        families: Families in :data:`~geoens.core.constants.FAMILIES` order.
        n_classes: Number of predictor classes per family (the zero column of label -1 is at that index).

    """
    fams = tuple(f for f in FAMILIES if f in families)
    key_order = [f for f in fams if f != "s2"] + [f for f in fams if f == "s2"]  # attributes major
    key = np.zeros(atoms.n, dtype=np.int64)
    for f in key_order:
        key = key * (n_classes[f] + 1) + (atoms.labels[f] + 1)
    uniq, first, inv = np.unique(key, return_index=True, return_inverse=True)
    g = uniq.size
    area = np.bincount(inv, weights=atoms.area, minlength=g).astype(np.float64)
    sxyz: FloatArray = np.stack(
        [np.bincount(inv, weights=atoms.sxyz[:, k], minlength=g) for k in range(3)], axis=1
    ).astype(np.float64)
    index = {}
    for f in fams:
        lab = atoms.labels[f][first]
        index[f] = np.where(lab < 0, n_classes[f], lab).astype(np.int64)
    attrs = [f for f in fams if f != "s2"]
    runs: list[tuple[int, int, dict[str, int]]] = []
    if attrs and "s2" in fams:
        combo = np.zeros(g, dtype=np.int64)
        for f in attrs:
            combo = combo * (n_classes[f] + 1) + index[f]
        starts = np.flatnonzero(np.concatenate([[True], combo[1:] != combo[:-1]]))
        stops = np.concatenate([starts[1:], [g]])
        runs = [
            (int(a), int(b), {f: int(index[f][a]) for f in attrs}) for a, b in zip(starts, stops, strict=True)
        ]
    return Groups(fams, index, area, sxyz, inv.astype(np.int64), tuple(runs))


def group_scores_t(
    groups: Groups, scores_t: Mapping[str, FloatArray], out: FloatArray | None = None
) -> FloatArray:
    """Alg. 2 on groups, transposed: ``groups x images`` from ``(classes + 1) x images`` class scores.

    ``P = (P_s2 * P_ls) * P_lc`` in float64, in the fixed family order, exactly as a raster implementation
    multiplying the per-pixel maps in that order. ``out``: optional contiguous ``groups x images`` buffer.
    """
    if "s2" not in groups.families or not groups.runs:
        P: FloatArray | None = None
        for f in groups.families:
            s = np.take(np.ascontiguousarray(scores_t[f]), groups.index[f], axis=0)
            P = s if P is None else np.multiply(P, s, out=P)
        assert P is not None
        if out is not None:
            out[...] = P
            return out
        return P
    src = np.ascontiguousarray(scores_t["s2"])
    P = np.take(src, groups.index["s2"], axis=0, out=out)
    for a, b, cls in groups.runs:
        blk = P[a:b]
        for f in groups.families:
            if f != "s2":
                blk *= scores_t[f][cls[f]]
    return P


def group_csr(groups: Groups) -> tuple[IntArray, IntArray]:
    """``(order, start)``: the atoms of group ``g`` are ``order[start[g]:start[g + 1]]``."""
    order = np.argsort(groups.of_atom, kind="stable").astype(np.int64)
    start = np.concatenate([[0], np.cumsum(np.bincount(groups.of_atom, minlength=groups.n))]).astype(np.int64)
    return order, start


# --------------------------------------------------------------------------------------------------
# Results and the grid top-1
# --------------------------------------------------------------------------------------------------
@dataclass
class MethodResult:
    """Per-image results of one method on a batch.

    Attributes:
        area: Alg. 3 area (km^2).
        zero_prob: ``P(g) == 0`` (area is then the whole sphere).
        top1_lat: Grid top-1 latitude (NaN when every ``P`` is 0).
        top1_lon: Grid top-1 longitude.

    """

    area: FloatArray
    zero_prob: BoolArray
    top1_lat: FloatArray
    top1_lon: FloatArray

    @classmethod
    def empty(cls, b: int) -> MethodResult:
        """Results of ``b`` images before evaluation: areas to fill, no zero flag, NaN top-1."""
        return cls(
            np.empty(b, dtype=np.float64), np.zeros(b, dtype=bool), np.full(b, np.nan), np.full(b, np.nan)
        )


def top1_directions(cen: FloatArray, pmax: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, IntArray]:
    """The top regions' centroid directions and points, from their ``sx, sy, sz`` sums (``images x 3``).

    Returns:
        ``(unit directions, lat, lon, images)``: ``images`` are those whose highest ``P`` is positive and
        whose centroid sum is not zero (the others keep a NaN top-1).

    """
    norm = np.linalg.norm(cen, axis=1)
    okc = (pmax > 0) & (norm > 0)
    cen_u = np.where(okc[:, None], cen / np.where(norm > 0, norm, 1.0)[:, None], 0.0)
    lat, lon = xyz_to_latlon(cen_u)
    lat = np.clip(lat, -90.0, 90.0)
    return cen_u, lat, lon, np.flatnonzero(okc)


def top1_fallback(
    groups: Groups,
    group_ids: IntArray,
    lookup: Lookup,
    csr: tuple[IntArray, IntArray] | None,
    direction: FloatArray,
) -> tuple[float, float]:
    """Centre of the top region's pixel nearest to the centroid direction (exact, from the atom index)."""
    if csr is None:
        csr = group_csr(groups)
    order, start = csr
    atom_ids = np.concatenate([order[start[g] : start[g + 1]] for g in group_ids])
    return lookup.nearest_pixel(atom_ids, direction)


def _true_positions(mask: BoolArray) -> IntArray:
    """Flat indices of the True entries of a contiguous bool array (fast when they are few)."""
    flat = mask.reshape(-1)
    m = flat.size // 8 * 8
    words = np.flatnonzero(flat[:m].view(np.uint64))
    cand = (words[:, None] * 8 + np.arange(8)).ravel()
    cand = cand[flat[cand]]
    tail = np.flatnonzero(flat[m:]) + m
    return np.concatenate([cand, tail]).astype(np.int64)


def evaluate_groups_dense(
    groups: Groups,
    scores_t: Mapping[str, FloatArray],
    gt_atom: IntArray,
    total_area: float,
    lookup: Lookup | None = None,
    group_atoms_csr: tuple[IntArray, IntArray] | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> MethodResult:
    """Alg. 2-3 and the top-1 on the dense ``groups x images`` score matrix (the previous engine).

    Materialises ``P`` of every group and image; kept for family sets without ``s2`` and as a reference for
    the threshold form (:func:`geoens.evaluation.evaluator.evaluate_groups`).

    Args:
        groups: The method's groups.
        scores_t: Family -> ``(classes + 1) x batch`` Alg. 1 class scores (:meth:`Evaluator.scores`).
        gt_atom: Atom of each image's ground-truth pixel.
        total_area: Area of the sphere (km^2), the area of a zero-probability image.
        lookup: Pixel lookup for the top-1; ``None`` skips the top-1 (NaN).
        group_atoms_csr: ``(order, start)`` atoms of each group (``order[start[g]:start[g+1]]``), for the
            top-1 fallback; computed when needed.
        chunk_elements: Bound on ``groups x images`` of one matrix.

    """
    b = gt_atom.size
    out = MethodResult.empty(b)
    area, zero, t_lat, t_lon = out.area, out.zero_prob, out.top1_lat, out.top1_lon
    gt_group = groups.of_atom[gt_atom]
    G = groups.n
    step = max(1, min(b, chunk_elements // max(G, 1)))
    csr = group_atoms_csr
    pbuf = np.empty(G * step, dtype=np.float64)  # buffers reused: fresh 30 MB arrays cost page faults
    fbuf = np.empty(G * step, dtype=np.float64)
    bbuf = np.empty(G * step, dtype=bool)
    for s in range(0, b, step):
        rows = slice(s, min(b, s + step))
        n = rows.stop - rows.start
        sc = {f: scores_t[f][:, rows] for f in groups.families}
        P = group_scores_t(groups, sc, out=pbuf[: G * n].reshape(G, n))  # groups x images
        cols = np.arange(n)
        thr = P[gt_group[rows], cols]
        ge = fbuf[: G * n].reshape(G, n)
        np.greater_equal(P, thr[None, :], out=ge, casting="unsafe")  # 1.0 / 0.0
        area[rows] = groups.area @ ge
        z = thr == 0.0
        area[rows][z] = total_area
        zero[rows] = z
        if lookup is None:
            continue
        pmax = P.max(axis=0)
        top = bbuf[: G * n].reshape(G, n)
        np.equal(P, pmax[None, :], out=top)
        gi, bi = np.divmod(_true_positions(top), n)
        cen = np.zeros((n, 3))
        np.add.at(cen, bi, groups.sxyz[gi])
        cen_u, lat, lon, idx = top1_directions(cen, pmax)
        if idx.size == 0:
            continue
        a = lookup.atom_at(lat[idx], lon[idx])
        inside = top[groups.of_atom[a], idx]
        t_lat[s + idx[inside]] = lat[idx[inside]]
        t_lon[s + idx[inside]] = lon[idx[inside]]
        for i in idx[~inside]:
            if csr is None:
                csr = group_csr(groups)
            t_lat[s + i], t_lon[s + i] = top1_fallback(groups, gi[bi == i], lookup, csr, cen_u[i])
    return out
