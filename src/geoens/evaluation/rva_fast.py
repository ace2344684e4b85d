"""Fast engines of Alg. 2-3 and the grid top-1 on :mod:`~geoens.evaluation.rva`'s groups, in one pass.

Two backends compute the same areas, zero-probability flags and top-1 points:

``numpy`` (default; the *threshold* form).
    Every group of a method is one S2 cell inside one *run* of equal attribute classes, so its score is
    ``P = f_r(s) = (s * a_r) * b_r`` with ``s`` the cell's Alg. 1 score and ``a_r, b_r`` the run's attribute
    scores (multiplied in the fixed family order, as a raster implementation does). A rounded product by a
    non-negative factor is monotone, so ``f_r(s) >= thr`` holds exactly when ``s >= t_r``, ``t_r`` the
    smallest float with ``f_r(t_r) >= thr``. :func:`s_threshold` finds ``t_r`` exactly (a first guess
    ``thr / a_r / b_r``, a few one-ulp steps, and a bisection on the float bits for the rare rest). Alg. 3
    then needs no product at all: per run, gather the cells' scores, compare with ``t_r``, and sum the areas
    of the hits (a matrix-vector product), in blocks that stay in the CPU cache. The highest score is
    ``max_r f_r(max of the run's s)`` (monotone again), and the top region is found the same way with the
    threshold of the maximum, only in the runs that reach it.

``torch`` (optional; the *dense* form, CUDA when present, else CPU).
    ``P`` of every group is materialised as ``(s * a) * b`` in float64 (the same rounded products), then
    ``P >= P(g)`` and a matrix product with the group areas. On a GPU this is one pass over ``groups x
    images`` at memory bandwidth.

Both agree with the pixel-by-pixel raster reference (tests/test_rva.py): same hits, areas equal up to the
order of summation (bit for bit where the pixel areas are integers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from geoens.core.types import FloatArray, IntArray
from geoens.evaluation.rva import Groups, MethodResult, top1_directions, top1_fallback
from geoens.geo.lookup import Lookup

#: Bytes of one ``block rows x images`` work matrix of the numpy backend (kept in the L2 cache).
BLOCK_BYTES = 512 * 1024
#: Groups per block of a run layout (the granularity at which the top-1 region is searched).
LAYOUT_BLOCK_ROWS = 256
#: Images per batch of the numpy backend (columns of the work matrices).
BATCH_IMAGES = 2048
#: Elements of one ``groups x images`` matrix of the torch backend on CUDA (1 GB as float64).
CUDA_CHUNK_ELEMENTS = 2**27
_F64_BITS_INF = np.float64(np.inf).view(np.int64)


# --------------------------------------------------------------------------------------------------
# exact thresholds on the S2 score
# --------------------------------------------------------------------------------------------------
def _apply(s: FloatArray, factors: list[FloatArray]) -> FloatArray:
    """``f(s) = (s * a) * b ...``: the rounded products in the given order."""
    v = s
    for fa in factors:
        v = v * fa
    return v


def s_threshold(thr: FloatArray, factors: list[FloatArray]) -> FloatArray:
    """Smallest ``t >= 0`` with ``f(t) >= thr``, ``f(s) = (s * factors[0]) * factors[1] ...`` (rounded).

    Args:
        thr: Thresholds, broadcastable with the factors (``> 0`` where it matters).
        factors: Non-negative finite factors, applied in order.

    Returns:
        ``t`` per entry; ``inf`` where some factor is 0 or ``thr`` is not positive (no finite ``s`` then
        satisfies ``f(s) >= thr`` with a meaningful threshold: callers treat ``thr <= 0`` separately).

    Because ``f`` is monotone non-decreasing, ``f(s) >= thr`` exactly when ``s >= t`` for every float ``s``.

    """
    shape = np.broadcast_shapes(np.shape(thr), *[np.shape(f) for f in factors])
    thr_b = np.broadcast_to(thr, shape)
    fac = [np.broadcast_to(f, shape) for f in factors]
    valid = thr_b > 0
    for f in fac:
        valid = valid & (f > 0)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore", under="ignore"):
        t = np.array(thr_b, dtype=np.float64, copy=True)
        for f in fac[::-1]:
            t = t / f
    t = np.maximum(np.where(np.isfinite(t), t, np.inf), 0.0)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for _ in range(4):  # up: f(t) >= thr
            low = valid & (_apply(t, fac) < thr_b)
            if not low.any():
                break
            t = np.where(low, np.nextafter(t, np.inf), t)
        for _ in range(4):  # down: f(t - 1 ulp) < thr
            prev = np.nextafter(t, 0.0)
            high = valid & (t > 0) & (_apply(prev, fac) >= thr_b)
            if not high.any():
                break
            t = np.where(high, prev, t)
        ok = ~valid | ((_apply(t, fac) >= thr_b) & ((t == 0) | (_apply(np.nextafter(t, 0.0), fac) < thr_b)))
        if not ok.all():  # bisection on the bits (non-negative floats order like their int64 bits)
            idx = np.nonzero(~ok)
            tf, fs = thr_b[idx], [f[idx] for f in fac]
            lo = np.zeros(tf.shape, np.int64)  # f(lo) < thr unless lo == 0 satisfies it
            hi = np.full(tf.shape, _F64_BITS_INF, np.int64)  # f(inf) = inf >= thr
            while True:
                open_ = hi - lo > 1
                if not open_.any():
                    break
                mid = lo + (hi - lo) // 2
                good = _apply(mid.view(np.float64), fs) >= tf
                hi = np.where(open_ & good, mid, hi)
                lo = np.where(open_ & ~good, mid, lo)
            zero_ok = _apply(np.zeros_like(tf), fs) >= tf
            t = t.copy()
            t[idx] = np.where(zero_ok, 0.0, hi.view(np.float64))
    return np.where(valid, t, np.inf)


# --------------------------------------------------------------------------------------------------
# run layout of a method's groups
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunLayout:
    """A method's groups as runs of equal attribute classes, cut into cache-sized blocks.

    Attributes:
        attrs: Attribute families of the method (``ls``, ``lc`` in family order).
        run_class: Attribute -> class index (row of the score matrix) of each run.
        run_bounds: ``R + 1`` group offsets of the runs.
        blocks: ``(run, start, stop)`` group ranges of at most ``block_rows`` groups inside one run.
        cells: S2 score row of each group.
        contiguous: Per block, whether its cells are consecutive rows (then no gather is needed).

    """

    attrs: tuple[str, ...]
    run_class: dict[str, IntArray]
    run_bounds: IntArray
    blocks: tuple[tuple[int, int, int], ...]
    cells: IntArray
    contiguous: tuple[bool, ...]


def run_layout(groups: Groups, block_rows: int) -> RunLayout:
    """Runs and blocks of a method's groups (which must include the ``s2`` family)."""
    attrs = tuple(f for f in groups.families if f != "s2")
    if groups.runs:
        bounds = [r[0] for r in groups.runs] + [groups.runs[-1][1]]
        run_class = {f: np.array([r[2][f] for r in groups.runs], dtype=np.int64) for f in attrs}
    else:  # one run: the base model alone (or attributes constant over all groups)
        bounds = [0, groups.n]
        run_class = {f: groups.index[f][:1].astype(np.int64) for f in attrs}
    cells = groups.index["s2"].astype(np.int64)
    blocks, contig = [], []
    for r in range(len(bounds) - 1):
        for a in range(bounds[r], bounds[r + 1], block_rows):
            b = min(bounds[r + 1], a + block_rows)
            blocks.append((r, a, b))
            c = cells[a:b]
            contig.append(bool(c.size and c[-1] - c[0] == c.size - 1 and np.all(np.diff(c) == 1)))
    return RunLayout(
        attrs, run_class, np.asarray(bounds, dtype=np.int64), tuple(blocks), cells, tuple(contig)
    )


# --------------------------------------------------------------------------------------------------
# numpy backend
# --------------------------------------------------------------------------------------------------
def evaluate_numpy(
    groups: Groups,
    layout: RunLayout,
    scores_t: Mapping[str, FloatArray],
    gt_atom: IntArray,
    total_area: float,
    lookup: Lookup | None,
    group_atoms_csr: tuple[IntArray, IntArray] | None,
    batch: int = BATCH_IMAGES,
) -> MethodResult:
    """Alg. 2-3 and the top-1 by the threshold form (see the module docstring).

    Images are taken ``batch`` at a time (columns); the groups in blocks of ``BLOCK_BYTES / (8 batch)``
    rows inside one run, so that a block's gathered scores stay in the CPU cache while they are compared
    and summed.
    """
    b = gt_atom.size
    out = MethodResult.empty(b)
    area, zero, t_lat, t_lon = out.area, out.zero_prob, out.top1_lat, out.top1_lon
    gt_group = groups.of_atom[gt_atom]
    run_of_group = np.searchsorted(layout.run_bounds, np.arange(groups.n), side="right") - 1
    src = scores_t["s2"]
    for s0 in range(0, b, batch):
        cols = slice(s0, min(b, s0 + batch))
        n = cols.stop - cols.start
        S = src if n == b else np.ascontiguousarray(src[:, cols])  # (cells + 1) x n
        fac = [np.ascontiguousarray(scores_t[f][layout.run_class[f]][:, cols]) for f in layout.attrs]
        g = gt_group[cols]
        rg = run_of_group[g]
        ar = np.arange(n)
        thr = _apply(S[layout.cells[g], ar], [f[rg, ar] for f in fac])
        z = thr == 0.0
        t = s_threshold(thr[None, :], fac)  # R x n
        acc, blk_max = _area_pass(groups, layout, S, t, lookup is not None)
        acc[z] = total_area
        area[cols] = acc
        zero[cols] = z
        if lookup is not None and blk_max is not None:
            _top1_numpy(groups, layout, S, fac, blk_max, lookup, group_atoms_csr, t_lat, t_lon, s0)
    return out


def _area_pass(
    groups: Groups, layout: RunLayout, S: FloatArray, t: FloatArray, want_max: bool
) -> tuple[FloatArray, FloatArray | None]:
    """Sum of the areas of the groups with ``s >= t_run`` per image, and each block's highest ``s``."""
    n = S.shape[1]
    rows_max = max(64, BLOCK_BYTES // (8 * max(n, 1)))
    buf = np.empty(rows_max * n, dtype=np.float64)
    hit = np.empty(rows_max * n, dtype=np.float64)
    acc = np.zeros(n)
    blk_max = np.empty((len(layout.blocks), n)) if want_max else None
    for bk, (r, a0, e0) in enumerate(layout.blocks):
        for a in range(a0, e0, rows_max):  # cut further when the batch is wide
            e = min(e0, a + rows_max)
            rows = e - a
            c0 = int(layout.cells[a])
            if layout.contiguous[bk]:
                M = S[c0 : c0 + rows]
            else:
                M = np.take(S, layout.cells[a:e], axis=0, out=buf[: rows * n].reshape(rows, n))
            if blk_max is not None:
                m = M.max(axis=0)
                blk_max[bk] = m if a == a0 else np.maximum(blk_max[bk], m)
            H = hit[: rows * n].reshape(rows, n)
            np.greater_equal(M, t[r][None, :], out=H, casting="unsafe")
            acc += groups.area[a:e] @ H
    return acc, blk_max


def _top1_numpy(
    groups: Groups,
    layout: RunLayout,
    S: FloatArray,
    fac: list[FloatArray],
    blk_max: FloatArray,
    lookup: Lookup,
    csr: tuple[IntArray, IntArray] | None,
    t_lat: FloatArray,
    t_lon: FloatArray,
    s0: int,
) -> None:
    """Grid top-1: the highest score from the blocks' maxima, its region from the blocks that reach it."""
    n = S.shape[1]
    blk_run = np.array([r for r, _, _ in layout.blocks], dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], blk_run[1:] != blk_run[:-1]]))
    run_max = np.maximum.reduceat(blk_max, starts, axis=0)  # R x n
    pr = _apply(np.maximum(run_max, 0.0), fac)  # the highest P of each run
    pmax = pr.max(axis=0)
    u = s_threshold(pmax[None, :], fac)  # P >= pmax  <=>  s >= u (per run)
    # blocks holding a top group: their run reaches pmax and their highest s reaches u
    reach = (blk_max >= u[blk_run]) & (pmax[None, :] > 0)
    cen = np.zeros((n, 3))
    for k in np.flatnonzero(reach.any(axis=1)):
        r, a, e = layout.blocks[k]
        ci = np.flatnonzero(reach[k])
        V = S[np.ix_(layout.cells[a:e], ci)] >= u[r, ci][None, :]
        cen[ci] += V.T.astype(np.float64) @ groups.sxyz[a:e]
    cen_u, lat, lon, idx = top1_directions(cen, pmax)
    if idx.size == 0:
        return
    ga = groups.of_atom[lookup.atom_at(lat[idx], lon[idx])]
    rr = np.searchsorted(layout.run_bounds, ga, side="right") - 1
    inside = S[layout.cells[ga], idx] >= u[rr, idx]
    inside &= pmax[idx] > 0
    t_lat[s0 + idx[inside]] = lat[idx[inside]]
    t_lon[s0 + idx[inside]] = lon[idx[inside]]
    for i in idx[~inside]:
        gs = []
        for k in np.flatnonzero(reach[:, i]):
            r, a, e = layout.blocks[k]
            gs.append(a + np.flatnonzero(S[layout.cells[a:e], i] >= u[r, i]))
        t_lat[s0 + i], t_lon[s0 + i] = top1_fallback(groups, np.concatenate(gs), lookup, csr, cen_u[i])


# --------------------------------------------------------------------------------------------------
# torch backend
# --------------------------------------------------------------------------------------------------
def _torch() -> Any:
    """The torch module; the torch backend is optional (the geo/report envs and a base install lack it).

    Raises:
        ImportError: Naming the extra that provides it.
    """
    try:
        import torch  # deferred: optional heavy dependency, only the torch backend needs it
    except ImportError as exc:  # optional: only `backend="torch"` needs it
        raise ImportError(
            "the torch evaluation backend needs torch: pip install 'geoens[torch]' (or use the numpy backend)"
        ) from exc
    return torch


def torch_device(device: str | None = None) -> Any:
    """The torch device of the torch backend: ``device`` if given, else CUDA when present, else CPU."""
    torch = _torch()
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class TorchGroups:
    """A method's groups on a torch device (index vectors, areas, centroid sums)."""

    index: dict[str, Any]
    area: Any
    sxyz: Any


def torch_groups(groups: Groups, device: Any) -> TorchGroups:
    """Copy a method's group arrays to ``device`` once."""
    torch = _torch()
    return TorchGroups(
        {f: torch.as_tensor(groups.index[f], device=device) for f in groups.families},
        torch.as_tensor(groups.area, dtype=torch.float64, device=device),
        torch.as_tensor(groups.sxyz, dtype=torch.float64, device=device),
    )


def evaluate_torch(
    groups: Groups,
    tg: TorchGroups,
    scores_t: Mapping[str, FloatArray],
    gt_atom: IntArray,
    total_area: float,
    lookup: Lookup | None,
    group_atoms_csr: tuple[IntArray, IntArray] | None,
    chunk_elements: int,
    device: Any,
) -> MethodResult:
    """Alg. 2-3 and the top-1 by the dense form on a torch device (see the module docstring)."""
    torch = _torch()

    b = gt_atom.size
    out = MethodResult.empty(b)
    area, zero, t_lat, t_lon = out.area, out.zero_prob, out.top1_lat, out.top1_lon
    G = groups.n
    if getattr(device, "type", "cpu") == "cuda":  # device memory is plentiful: fewer, larger launches
        chunk_elements = max(chunk_elements, CUDA_CHUNK_ELEMENTS)
    step = max(1, min(b, chunk_elements // max(G, 1)))
    gt_group = torch.as_tensor(groups.of_atom[gt_atom], device=device)
    sc = {f: torch.as_tensor(np.ascontiguousarray(scores_t[f]), device=device) for f in groups.families}
    for s0 in range(0, b, step):
        s1 = min(b, s0 + step)
        n = s1 - s0
        pm = None
        for f in groups.families:  # the fixed family order: (s2 * ls) * lc
            v = sc[f][:, s0:s1].index_select(0, tg.index[f])
            pm = v if pm is None else pm.mul_(v)
        assert pm is not None
        ar = torch.arange(n, device=device)
        thr = pm[gt_group[s0:s1], ar]
        hit = (pm >= thr[None, :]).to(torch.float64)
        a = tg.area[None, :] @ hit
        z = thr == 0
        a = torch.where(z, torch.full_like(a[0], total_area), a[0])
        area[s0:s1] = a.cpu().numpy()
        zero[s0:s1] = z.cpu().numpy()
        if lookup is None:
            continue
        pmax = pm.max(dim=0).values
        top = (pm == pmax[None, :]).to(torch.float64)
        cen = (top.T @ tg.sxyz).cpu().numpy()
        cen_u, lat, lon, idx = top1_directions(cen, pmax.cpu().numpy())
        if idx.size == 0:
            continue
        ga = groups.of_atom[lookup.atom_at(lat[idx], lon[idx])]
        inside = (
            top[torch.as_tensor(ga, device=device), torch.as_tensor(idx, device=device)].cpu().numpy() > 0
        )
        t_lat[s0 + idx[inside]] = lat[idx[inside]]
        t_lon[s0 + idx[inside]] = lon[idx[inside]]
        for i in idx[~inside]:
            gs = torch.nonzero(top[:, int(i)] > 0).flatten().cpu().numpy().astype(np.int64)
            t_lat[s0 + i], t_lon[s0 + i] = top1_fallback(groups, gs, lookup, group_atoms_csr, cen_u[i])
    return out
