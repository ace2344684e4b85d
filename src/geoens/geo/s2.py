"""Vectorised S2 cell ids in numpy, bit-exact with s2geometry / s2sphere.

Only what the project needs: lat/lng -> leaf cell id, ancestry (``parent``, ``level``, ``children``),
the leaf range of a cell (``range_min``, ``range_max``), tokens, and the cell's centre point.

The algorithm follows s2geometry: the point's unit vector picks the cube face (largest absolute
component), the face coordinates ``(u, v)`` are mapped to ``(s, t)`` by the quadratic projection, then to
30-bit integers ``(i, j)``, which the Hilbert curve turns into a position by a 4-bit lookup table (eight
table look-ups per point). The floating-point operations are done in the same order as s2sphere, so
the ids agree exactly (the tests compare against s2sphere).

Ids are ``numpy.uint64``; a cell id of level ``L`` has its lowest set bit at ``2 * (30 - L)``.

Partitions of S2 cells live in :mod:`geoens.geo.partitions`; their rasterisation on the grid and the
absorption of sub-pixel cells in :mod:`geoens.geo.s2mask`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from geoens.core.types import FloatArray, IntArray, U64Array

MAX_LEVEL = 30
_MAX_SIZE = 1 << MAX_LEVEL
_LOOKUP_BITS = 4
_SWAP_MASK = 1
_INVERT_MASK = 2
_POS_TO_IJ = ((0, 1, 3, 2), (0, 2, 3, 1), (3, 2, 0, 1), (3, 1, 0, 2))
_POS_TO_ORIENTATION = (_SWAP_MASK, 0, 0, _INVERT_MASK | _SWAP_MASK)


def _build_lookup() -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Build the s2geometry Hilbert lookup tables ``LOOKUP_POS`` and ``LOOKUP_IJ`` (1024 entries each)."""
    n = 1 << (2 * _LOOKUP_BITS + 2)
    lookup_pos = np.zeros(n, dtype=np.int64)
    lookup_ij = np.zeros(n, dtype=np.int64)

    def init(level: int, i: int, j: int, orig: int, pos: int, orientation: int) -> None:
        if level == _LOOKUP_BITS:
            ij = (i << _LOOKUP_BITS) + j
            lookup_pos[(ij << 2) + orig] = (pos << 2) + orientation
            lookup_ij[(pos << 2) + orig] = (ij << 2) + orientation
            return
        level += 1
        i <<= 1
        j <<= 1
        pos <<= 2
        r = _POS_TO_IJ[orientation]
        for k in range(4):
            init(level, i + (r[k] >> 1), j + (r[k] & 1), orig, pos + k, orientation ^ _POS_TO_ORIENTATION[k])

    for orientation in (0, _SWAP_MASK, _INVERT_MASK, _SWAP_MASK | _INVERT_MASK):
        init(0, 0, 0, orientation, 0, orientation)
    return lookup_pos, lookup_ij


_LOOKUP_POS, _LOOKUP_IJ = _build_lookup()
_LOOKUP_POS_U64 = _LOOKUP_POS.astype(np.uint64)


def _u64(x: npt.ArrayLike) -> U64Array:
    return np.asarray(x, dtype=np.uint64)


# ---------------------------------------------------------------------------------------------------
# lat/lng -> leaf
# ---------------------------------------------------------------------------------------------------


def _uv_to_st(u: FloatArray) -> FloatArray:
    """Quadratic projection, as s2geometry: ``0.5 sqrt(1 + 3u)`` or ``1 - 0.5 sqrt(1 - 3u)``."""
    t = 0.5 * np.sqrt(1.0 + 3.0 * np.abs(u))  # 1 - 3u == 1 + 3|u| exactly for u < 0
    return np.where(u >= 0, t, 1.0 - t)


def _st_to_ij(s: FloatArray) -> npt.NDArray[np.int64]:
    return np.clip(np.floor(_MAX_SIZE * s), 0, _MAX_SIZE - 1).astype(np.int64)


def _face_of_xyz(x: FloatArray, y: FloatArray, z: FloatArray) -> npt.NDArray[np.int8]:
    """Cube face, with s2sphere's tie-breaking (``largest_abs_component``)."""
    return _axis_face(x, y, z)[1]


def _axis_face(
    x: FloatArray, y: FloatArray, z: FloatArray
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.int8]]:
    ax, ay, az = np.abs(x), np.abs(y), np.abs(z)
    axis = np.where(ax > ay, np.where(ax > az, 0, 2), np.where(ay > az, 1, 2)).astype(np.int8)
    comp = np.where(axis == 0, x, np.where(axis == 1, y, z))
    return axis, (axis + np.where(comp < 0, 3, 0)).astype(np.int8)


def xyz_to_leaf(x: FloatArray, y: FloatArray, z: FloatArray) -> U64Array:
    """Leaf cell ids of points given as (unit) vectors ``x, y, z`` (same shape)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    z = np.asarray(z, dtype=np.float64).ravel()
    axis, face = _axis_face(x, y, z)
    # s2geometry's ValidFaceXYZtoUV: faces 0-2 give (p, q) / den, faces 3-5 (q, p) / den, with
    # (p, q) = (y, z), (-x, z), (-x, -y) on axis x, y, z.
    den = np.where(axis == 0, x, np.where(axis == 1, y, z))
    p = np.where(axis == 0, y, -x)
    q = np.where(axis == 2, -y, z)
    swap = face >= 3
    u = np.where(swap, q, p) / den
    v = np.where(swap, p, q) / den
    i = _st_to_ij(_uv_to_st(u))
    j = _st_to_ij(_uv_to_st(v))
    return _from_face_ij(face, i, j)


def _build_lookup8() -> npt.NDArray[np.int32]:
    """Compose two 4-bit Hilbert steps: ``i8 << 10 | j8 << 2 | orientation -> pos16 << 2 | orientation``."""
    idx = np.arange(1 << 18, dtype=np.int64)
    orient = idx & 3
    j8 = (idx >> 2) & 0xFF
    i8 = idx >> 10
    hi = _LOOKUP_POS[(((i8 >> 4) << 4 | (j8 >> 4)) << 2) + orient]
    lo = _LOOKUP_POS[((((i8 & 15) << 4) | (j8 & 15)) << 2) + (hi & 3)]
    return (((hi >> 2) << 8 | (lo >> 2)) << 2 | (lo & 3)).astype(np.int32)


_LOOKUP_POS8 = _build_lookup8()


def _from_face_ij(face: npt.NDArray[np.int8], i: npt.ArrayLike, j: npt.ArrayLike) -> U64Array:
    """Leaf ids from face and 30-bit ``i, j`` through the Hilbert lookup table (as s2geometry).

    s2geometry walks the 30 bits in eight 4-bit steps; here two steps are composed into one 8-bit table
    (the top step holds the 6 highest bits), which gives the same positions in four look-ups.
    """
    ii = np.asarray(i, dtype=np.int64)
    jj = np.asarray(j, dtype=np.int64)
    bits = face.astype(np.int64) & _SWAP_MASK
    pos = np.zeros(ii.shape, dtype=np.int64)
    for k in range(3, -1, -1):
        sh = 8 * k
        bits = _LOOKUP_POS8[(((ii >> sh) & 0xFF) << 10) + (((jj >> sh) & 0xFF) << 2) + bits]
        pos |= (bits >> 2).astype(np.int64) << (2 * sh)
        bits = bits & 3
    # face << (POS_BITS - 1), POS_BITS = 61
    out = (face.astype(np.uint64) << np.uint64(60)) | pos.astype(np.uint64)
    return out * np.uint64(2) + np.uint64(1)


def latlng_to_leaf(lat: npt.ArrayLike, lon: npt.ArrayLike) -> U64Array:
    """Leaf cell ids (level 30) of points in degrees; same as s2sphere ``CellId.from_lat_lng(...).id()``.

    Args:
        lat: Latitudes in degrees (any shape).
        lon: Longitudes in degrees (broadcast with ``lat``).

    Returns:
        ``uint64`` ids with the broadcast shape of the inputs.

    """
    la, lo = np.broadcast_arrays(np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64))
    shape = la.shape
    phi = np.deg2rad(la.ravel())
    theta = np.deg2rad(lo.ravel())
    cosphi = np.cos(phi)
    ids = xyz_to_leaf(np.cos(theta) * cosphi, np.sin(theta) * cosphi, np.sin(phi))
    return ids.reshape(shape)


def grid_leaves(lat_rows: npt.ArrayLike, lon_cols: npt.ArrayLike) -> U64Array:
    """Leaf ids of the outer product of row latitudes and column longitudes (``len(lat) x len(lon)``).

    Same ids as :func:`latlng_to_leaf` on the meshgrid, with the trigonometry done once per row/column.
    """
    phi = np.deg2rad(np.asarray(lat_rows, dtype=np.float64))
    theta = np.deg2rad(np.asarray(lon_cols, dtype=np.float64))
    cosphi = np.cos(phi)[:, None]
    sinphi = np.sin(phi)[:, None]
    x = np.cos(theta)[None, :] * cosphi
    y = np.sin(theta)[None, :] * cosphi
    z = np.broadcast_to(sinphi, x.shape)
    return xyz_to_leaf(x, y, z).reshape(x.shape)


# ---------------------------------------------------------------------------------------------------
# ancestry, ranges, tokens
# ---------------------------------------------------------------------------------------------------


def lsb(ids: npt.ArrayLike) -> U64Array:
    """Lowest set bit of each id."""
    a = _u64(ids)
    return a & (~a + np.uint64(1))


def _lsb_for_level(level_: npt.ArrayLike) -> U64Array:
    lv = np.asarray(level_, dtype=np.int64)
    if np.any((lv < 0) | (lv > MAX_LEVEL)):
        raise ValueError(f"S2 level outside 0..30: {lv}")
    return np.left_shift(np.uint64(1), (2 * (MAX_LEVEL - lv)).astype(np.uint64))


def level(ids: npt.ArrayLike) -> IntArray:
    """Level (0..30) of each cell id.

    Raises:
        ValueError: If an id is 0 or has its lowest set bit at an odd position (not a valid cell id).

    """
    a = _u64(ids)
    low = lsb(a)
    if np.any(a == 0):
        raise ValueError("invalid S2 cell id 0")
    tz = np.log2(low.astype(np.float64)).astype(np.int64)  # exact: low is a power of two
    if np.any(tz % 2):
        bad = a.ravel()[np.flatnonzero((tz % 2).ravel())[0]]
        raise ValueError(f"invalid S2 cell id {int(bad)} (token {id_to_token([bad])[0]})")
    return MAX_LEVEL - tz // 2


def parent(ids: npt.ArrayLike, level_: int | npt.ArrayLike) -> U64Array:
    """Ancestor of each id at ``level_`` (which must not exceed the id's own level).

    Raises:
        ValueError: If a requested level is finer than the cell's level.

    """
    a = _u64(ids)
    lv = level(a)
    target = np.asarray(level_, dtype=np.int64)
    if np.any(target > lv):
        raise ValueError(f"parent level {target} finer than cell level(s) {np.unique(lv)}")
    low = _lsb_for_level(target)
    return (a & (~low + np.uint64(1))) | low


def range_min(ids: npt.ArrayLike) -> U64Array:
    """First leaf id inside each cell."""
    a = _u64(ids)
    return a - (lsb(a) - np.uint64(1))


def range_max(ids: npt.ArrayLike) -> U64Array:
    """Last leaf id inside each cell."""
    a = _u64(ids)
    return a + (lsb(a) - np.uint64(1))


def contains(cell: npt.ArrayLike, other: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Whether ``cell`` contains ``other`` (any level), element-wise."""
    o = _u64(other)
    return (range_min(cell) <= o) & (o <= range_max(cell))


def children(cell_id: int | np.uint64) -> U64Array:
    """Return the four children of one cell, in Hilbert order.

    Raises:
        ValueError: If the cell is a leaf.

    """
    a = np.uint64(cell_id)
    old = lsb(np.array([a]))[0]
    if old == 1:
        raise ValueError(f"leaf cell {int(a)} has no children")
    new = old >> np.uint64(2)
    begin = a - old + new
    out: U64Array = begin + np.arange(4, dtype=np.uint64) * (new << np.uint64(1))
    return out


def face(ids: npt.ArrayLike) -> IntArray:
    """Cube face (0..5) of each id."""
    return (_u64(ids) >> np.uint64(61)).astype(np.int64)


def token_to_id(tokens: Iterable[str]) -> U64Array:
    """Ids of S2 tokens (hex with trailing zeros stripped; ``"X"`` is id 0).

    Raises:
        ValueError: If a token is not 1..16 hex digits.

    """
    out = []
    for t in tokens:
        s = str(t).strip()
        if s in ("X", "x"):
            out.append(0)
            continue
        if not 1 <= len(s) <= 16:
            raise ValueError(f"invalid S2 token {t!r}")
        try:
            out.append(int(s.ljust(16, "0"), 16))
        except ValueError as exc:
            raise ValueError(f"invalid S2 token {t!r}") from exc
    return np.array(out, dtype=np.uint64)


def id_to_token(ids: npt.ArrayLike) -> list[str]:
    """S2 tokens of ids (``"X"`` for 0)."""
    out = []
    for v in _u64(ids).ravel().tolist():
        out.append("X" if v == 0 else f"{v:016x}".rstrip("0"))
    return out


# ---------------------------------------------------------------------------------------------------
# decoding: id -> face, i, j -> centre
# ---------------------------------------------------------------------------------------------------


def to_face_ij(ids: npt.ArrayLike) -> tuple[IntArray, IntArray, IntArray]:
    """``(face, i, j)`` of the leaf that the id's position names (s2geometry ``ToFaceIJOrientation``)."""
    a = _u64(ids).ravel()
    f = (a >> np.uint64(61)).astype(np.int64)
    i = np.zeros(a.shape, dtype=np.int64)
    j = np.zeros(a.shape, dtype=np.int64)
    bits = f & _SWAP_MASK
    m4 = (1 << _LOOKUP_BITS) - 1
    for k in range(7, -1, -1):
        nbits = MAX_LEVEL - 7 * _LOOKUP_BITS if k == 7 else _LOOKUP_BITS
        chunk = ((a >> np.uint64(k * 2 * _LOOKUP_BITS + 1)) & np.uint64((1 << (2 * nbits)) - 1)).astype(
            np.int64
        )
        bits = _LOOKUP_IJ[bits + (chunk << 2)]
        i += (bits >> (_LOOKUP_BITS + 2)) << (k * _LOOKUP_BITS)
        j += ((bits >> 2) & m4) << (k * _LOOKUP_BITS)
        bits &= _SWAP_MASK | _INVERT_MASK
    return f, i, j


def _st_to_uv(s: FloatArray) -> FloatArray:
    return np.where(
        s >= 0.5, (1.0 / 3.0) * (4.0 * s * s - 1.0), (1.0 / 3.0) * (1.0 - 4.0 * (1.0 - s) * (1.0 - s))
    )


def _face_uv_to_xyz(f: IntArray, u: FloatArray, v: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    one = np.ones_like(u)
    x = np.select([f == 0, f == 1, f == 2, f == 3, f == 4], [one, -u, -u, -one, v], v)
    y = np.select([f == 0, f == 1, f == 2, f == 3, f == 4], [u, one, -v, -v, -one], u)
    z = np.select([f == 0, f == 1, f == 2, f == 3, f == 4], [v, v, one, -u, -u], -one)
    return x, y, z


def cell_center_xyz(ids: npt.ArrayLike) -> FloatArray:
    """Return unit vectors (``n x 3``) of the cells' centres (s2geometry ``CellId::ToPoint``)."""
    a = _u64(ids).ravel()
    f, i, j = to_face_ij(a)
    size = np.left_shift(1, MAX_LEVEL - level(a))  # cell side in leaf units, 2^(30 - level)
    i0 = i & ~(size - 1)
    j0 = j & ~(size - 1)
    s = (2 * i0 + size).astype(np.float64) * (1.0 / (1 << 31))
    t = (2 * j0 + size).astype(np.float64) * (1.0 / (1 << 31))
    x, y, z = _face_uv_to_xyz(f, _st_to_uv(s), _st_to_uv(t))
    xyz = np.stack([x, y, z], axis=-1)
    unit: FloatArray = xyz / np.linalg.norm(xyz, axis=-1, keepdims=True)
    return unit


def cell_center_latlng(ids: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Degrees ``(lat, lon)`` of the cells' centres (s2sphere ``CellId.to_lat_lng()``)."""
    xyz = cell_center_xyz(ids)
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    lat = np.rad2deg(np.arctan2(z, np.sqrt(x * x + y * y)))
    lon = np.rad2deg(np.arctan2(y, x))
    return lat, lon
