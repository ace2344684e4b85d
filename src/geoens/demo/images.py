"""Rendering of the demo world's images, vectorised over batches, and the cameras of the image sets.

Images are rendered from the land cover at the point, the population (farmsteads from ~10 people per cell,
town and city buildings from a few hundred) and a smooth regional style (tint, texture orientation, sky),
with noise and occasional look-alike classes, so attributes are visible with realistic confusion and
location is only partly inferable. :func:`render_images` draws every image's parameters first (one random
stream), then renders each batch in phases (ground texture, colours, sky, buildings, farmsteads, road,
camera), each batch with its own random stream, so results do not depend on memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeVar, cast

import numpy as np
import numpy.typing as npt

from geoens.demo.spec import F32, F64, I64, U8, stream_rng
from geoens.demo.world import TO_CLASS, TO_TOP, RenderInputs, WorldFields

_G = TypeVar("_G", bound=np.generic)

#: Images rendered per vectorised batch (fixed, so that results do not depend on memory).
BATCH: Final[int] = 256


@dataclass(frozen=True)
class Camera:
    """How a test set's images are taken (the domain shift between Flickr and Street View)."""

    horizon: float  # mean horizon height, as a fraction of the image from the top
    horizon_sd: float
    zoom: float  # texture frequency multiplier (wider field of view = higher)
    balance: tuple[float, float, float]  # per-channel gain
    blur: int  # box blur passes
    road: bool
    jpeg_quality: int


CAMERAS: Final[dict[str, Camera]] = {
    "flickr": Camera(0.42, 0.07, 1.0, (1.0, 1.0, 1.0), 0, False, 90),
    "streetview": Camera(0.55, 0.03, 1.6, (1.08, 1.0, 0.84), 1, True, 80),
}

# Ground palettes per merged LC class: (colour A, colour B) mixed by the class's texture.
_PALETTE: Final[dict[int, tuple[tuple[float, float, float], tuple[float, float, float]]]] = {
    0: ((0.80, 0.74, 0.30), (0.45, 0.58, 0.20)),  # cropland: wheat / green stripes
    1: ((0.08, 0.35, 0.10), (0.20, 0.52, 0.16)),  # broadleaf: deep greens, blobs
    2: ((0.05, 0.22, 0.17), (0.16, 0.34, 0.24)),  # needleleaf/other tree: blue-green spikes
    3: ((0.62, 0.66, 0.36), (0.52, 0.60, 0.30)),  # short vegetation: khaki, smooth
    4: ((0.22, 0.46, 0.22), (0.25, 0.45, 0.62)),  # flooded: green with water
    5: ((0.46, 0.45, 0.44), (0.36, 0.36, 0.37)),  # urban: grey
    6: ((0.86, 0.76, 0.55), (0.74, 0.62, 0.42)),  # bare (water and snow override below)
}
_WATER = ((0.12, 0.30, 0.55), (0.22, 0.45, 0.70))
_SNOW = ((0.95, 0.96, 0.98), (0.78, 0.84, 0.92))
#: Farmstead colours (whitewashed wall, red-brown roof).
_HOUSE_WALL: Final[F64] = np.array([0.85, 0.80, 0.70])
_HOUSE_ROOF: Final[F64] = np.array([0.55, 0.22, 0.15])
#: Probability that an image's ground looks like another class (realistic confusion).
CONFUSION: Final[float] = 0.12


def _box_blur(img: F32) -> F32:
    p = np.pad(img, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    acc = np.zeros_like(img)
    s = img.shape[1]
    for dy in range(3):
        for dx in range(3):
            acc += p[:, dy : dy + s, dx : dx + s]
    return acc / np.float32(9.0)


@dataclass
class _Scene:
    """Per-image parameters of one :func:`render_images` call, drawn before any batch (all length ``n``)."""

    shown: I64  # merged LC class whose ground is shown (look-alikes included)
    shown_top: npt.NDArray[np.uint8]  # LCCS top-level code shown (0 for look-alikes)
    tint: F64  # regional colour tint (n x 3)
    angle: F64  # texture orientation
    n_build: I64  # buildings
    n_huts: I64  # farmsteads
    params: dict[str, F64]  # horizon, freq, phase, gain, mix, sky, cloud, max_h


def _draw_scene(inputs: RenderInputs, cam: Camera, seed: int, fields: WorldFields, stream: str) -> _Scene:
    """Draw every image's parameters from the ``(seed, stream, "params")`` stream, in a fixed order."""
    n = len(inputs.lc_code)
    rng = stream_rng(seed, stream, "params")
    cls = TO_CLASS[inputs.lc_code].astype(np.int64)
    cls = np.where(cls < 0, 6, cls)
    top = TO_TOP[inputs.lc_code]
    # Look-alike classes: a share of images shows another class's ground (buildings stay truthful).
    confuse = rng.random(n) < CONFUSION
    shown = np.where(confuse, (cls + rng.integers(1, 7, n)) % 7, cls)
    shown_top = np.where(confuse, 0, top)
    # Regional style: smooth in lat/lon, so location is partly visible.
    st = np.stack([f.at(inputs.lat, inputs.lon) for f in fields.style], axis=1)
    tint = 0.07 * np.tanh(st[:, :3])
    angle = 0.8 * st[:, 3] + rng.normal(0.0, 0.35, n)
    alat = np.abs(inputs.lat)
    lp = np.log10(np.maximum(inputs.shown_population(), 0.0) + 1.0)
    n_build = rng.poisson(np.clip(0.9 * (lp - 1.6), 0.0, None) ** 1.6)
    n_build = np.minimum(n_build, 14)
    # Farmsteads (sparse settlement): small houses with red-brown roofs from ~10 people per cell upward, so
    # that sparsely populated land looks different from empty land.
    n_huts = np.minimum(rng.poisson(np.clip(1.4 * (lp - 1.0), 0.0, 3.0)), 5)
    params = {
        "horizon": np.clip(cam.horizon + rng.normal(0, cam.horizon_sd, n), 0.2, 0.75),
        "freq": cam.zoom * rng.uniform(0.8, 1.25, n),
        "phase": rng.uniform(0, 2 * np.pi, (n, 4)),
        "gain": rng.uniform(0.8, 1.2, n),
        "mix": rng.uniform(-0.15, 0.15, (n, 3)),
        "sky": np.stack([0.45 + 0.25 * alat / 90, 0.62 + 0.1 * alat / 90, 0.92 - 0.1 * alat / 90], axis=1)
        + rng.normal(0, 0.05, (n, 3)),
        "cloud": rng.uniform(0, 1, n),
        "max_h": np.clip(0.08 + 0.07 * (lp - 2.0) + rng.normal(0, 0.04, n), 0.05, 0.6),
    }
    return _Scene(shown, shown_top, tint, angle, n_build, n_huts, params)


def _col(a: F64, m: int) -> F32:
    """One value per image as an ``m x 1 x 1`` float32 column."""
    return a.astype(np.float32).reshape((m, 1, 1))


def _r3(a: npt.NDArray[_G]) -> npt.NDArray[_G]:
    """One value per image broadcast over the image plane (``k -> k x 1 x 1``)."""
    return a[:, None, None]


def _ground_texture(sh: I64, fr: F32, ph: F32, u: F32, v: F32, xx: F32, yy: F32) -> tuple[F32, F32]:
    """Ground texture ``t`` in [0, 1] and the ground-top profile ``bump``, per shown class."""
    m, s = sh.size, xx.shape[2]
    t = np.zeros((m, s, s), np.float32)
    bump = np.zeros((m, 1, s), np.float32)
    for k in range(7):
        idx = np.flatnonzero(sh == k)
        if idx.size == 0:
            continue
        f, p = fr[idx], ph[idx]
        uu, vv = u[idx], v[idx]
        if k == 0:  # crop rows
            tk = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * 7 * f * uu + p[:, 0, None, None]))
            tk = np.broadcast_to(tk, (idx.size, s, s))
        elif k == 1:  # canopy blobs, rounded crowns above the horizon
            tk = 0.5 + 0.25 * (
                np.sin(2 * np.pi * 9 * f * uu + p[:, 0, None, None])
                * np.sin(2 * np.pi * 9 * f * vv + p[:, 1, None, None])
                + np.sin(2 * np.pi * 4 * f * (uu + vv) + p[:, 2, None, None])
            )
            bump[idx] = 0.10 * np.abs(np.sin(2 * np.pi * 5 * f * xx + p[:, 3, None, None]))
        elif k == 2:  # conifers: saw-tooth tree line, vertical streaks
            tk = 0.5 + 0.5 * np.sin(2 * np.pi * 14 * f * xx + p[:, 0, None, None]) * np.ones_like(yy)
            saw = (10 * f * xx + p[:, 3, None, None] / (2 * np.pi)) % 1.0
            bump[idx] = 0.20 * (1.0 - np.abs(2 * saw - 1.0))
        elif k == 3:  # smooth grass with faint waves
            tk = 0.5 + 0.2 * np.sin(2 * np.pi * 2 * f * vv + p[:, 0, None, None])
        elif k == 4:  # flooded: water bands among vegetation
            tk = np.sin(2 * np.pi * 5 * f * yy + 3 * np.sin(2 * np.pi * 2 * xx + p[:, 0, None, None])) > 0.3
            tk = tk.astype(np.float32) * np.ones_like(xx)
            bump[idx] = 0.05 * np.abs(np.sin(2 * np.pi * 6 * f * xx + p[:, 3, None, None]))
        elif k == 5:  # urban: paving grid
            g = np.sin(2 * np.pi * 10 * f * uu + p[:, 0, None, None]) * np.sin(
                2 * np.pi * 10 * f * vv + p[:, 1, None, None]
            )
            tk = (g > 0).astype(np.float32)
        else:  # bare: dune ripples
            tk = 0.5 + 0.5 * np.sin(2 * np.pi * 6 * f * vv + 1.5 * np.sin(2 * np.pi * 3 * uu))
        t[idx] = tk
    return t, bump


def _ground_colours(sh: I64, tp: npt.NDArray[np.uint8], tint_b: F32) -> tuple[F32, F32]:
    """The two ground colours of each image (``m x 3``): class palette, top-level overrides, tint."""
    m = sh.size
    ca_, cb_ = np.zeros((m, 3), np.float32), np.zeros((m, 3), np.float32)
    for k, (pa, pb) in _PALETTE.items():
        sel = sh == k
        ca_[sel], cb_[sel] = pa, pb
    for codes, (pa, pb) in (
        ((210,), _WATER),
        ((220,), _SNOW),
        ((20,), ((0.3, 0.62, 0.2), (0.5, 0.7, 0.25))),
    ):
        sel = np.isin(tp, codes)
        ca_[sel], cb_[sel] = pa, pb
    sparse = np.isin(tp, (150, 151, 152, 153, 140))
    ca_[sparse] = 0.5 * ca_[sparse] + 0.5 * np.asarray(_PALETTE[6][0], np.float32)
    ca_ = np.clip(ca_ + tint_b, 0, 1)
    cb_ = np.clip(cb_ + tint_b, 0, 1)
    return ca_, cb_


def _landscape(scene: _Scene, sl: slice, hz: F32, xx: F32, yy: F32) -> F32:
    """Ground (textured, hazy toward the horizon) below the horizon and a cloudy sky above it."""
    m = hz.shape[0]
    params = scene.params
    fr = _col(params["freq"][sl], m)
    ph = params["phase"][sl].astype(np.float32)
    ang = _col(scene.angle[sl], m)
    ca, sa = np.cos(ang), np.sin(ang)
    u = xx * ca + yy * sa  # rotated coordinates (regional texture orientation)
    v = -xx * sa + yy * ca
    sh = scene.shown[sl]
    t, bump = _ground_texture(sh, fr, ph, u, v, xx, yy)
    tint_b = scene.tint[sl].astype(np.float32) + params["mix"][sl].astype(np.float32) * 0.3
    ca_, cb_ = _ground_colours(sh, scene.shown_top[sl], tint_b)
    tt = t[..., None]
    ground = ca_[:, None, None, :] * (1 - tt) + cb_[:, None, None, :] * tt
    # distance haze: ground fades toward the horizon
    depth = np.clip((yy - hz) / (1 - hz + 1e-3), 0, 1)[..., None]
    sky_c = np.clip(params["sky"][sl].astype(np.float32) + tint_b * 0.5, 0, 1)
    ground = ground * (0.75 + 0.25 * depth) + sky_c[:, None, None, :] * 0.25 * (1 - depth)
    # --- sky with clouds
    cloud = (
        np.sin(2 * np.pi * 1.3 * xx + ph[:, 2, None, None])
        * np.sin(2 * np.pi * 1.7 * yy + ph[:, 3, None, None])
        + 0.5 * np.sin(2 * np.pi * 3.1 * (xx + 0.6 * yy) + ph[:, 0, None, None])
    ) * _col(params["cloud"][sl], m)
    sky = sky_c[:, None, None, :] * (0.85 + 0.15 * yy[..., None]) + 0.35 * np.clip(cloud, 0, 1)[..., None]
    is_ground = (yy >= hz - bump)[..., None]
    pixels: F32 = np.where(is_ground, ground, sky)
    return pixels


def _draw_buildings(img: F32, nb: I64, mh: F64, hz: F32, brng: np.random.Generator, xx: F32, yy: F32) -> F32:
    """Buildings (population): rectangles standing on the horizon, windows when tall; in place."""
    m = nb.size
    for j in range(int(nb.max()) if m else 0):
        act = nb > j
        if not act.any():
            continue
        idx = np.flatnonzero(act)
        x0 = brng.uniform(0.0, 0.9, idx.size).astype(np.float32)
        bw = brng.uniform(0.06, 0.2, idx.size).astype(np.float32)
        bh = (mh[idx] * brng.uniform(0.4, 1.0, idx.size)).astype(np.float32)
        base = hz[idx, 0, 0] + brng.uniform(0.0, 0.12, idx.size).astype(np.float32)
        shade = brng.uniform(0.35, 0.8, idx.size).astype(np.float32)
        warm = brng.uniform(-0.06, 0.08, idx.size).astype(np.float32)
        inside = (xx >= _r3(x0)) & (xx < _r3(x0 + bw)) & (yy >= _r3(base - bh)) & (yy < _r3(base))
        win = (np.sin(2 * np.pi * 40 * xx) > 0.3) & (np.sin(2 * np.pi * 40 * yy) > 0.3) & _r3(bh > 0.2)
        colr = np.stack([shade + warm, shade, shade - warm], axis=1)[:, None, None, :]
        bimg = np.where(win[..., None], colr * 0.55 + 0.25, colr)
        img[idx] = np.where(inside[..., None], bimg, img[idx])
    return img


def _draw_farmsteads(img: F32, nh: I64, hz: F32, brng: np.random.Generator, xx: F32, yy: F32) -> F32:
    """Farmsteads: small houses with pitched red-brown roofs on the ground below the horizon; in place."""
    m = nh.size
    for j in range(int(nh.max()) if m else 0):
        idx = np.flatnonzero(nh > j)
        if idx.size == 0:
            continue
        x0 = brng.uniform(0.0, 0.9, idx.size).astype(np.float32)
        below = brng.uniform(0.06, 0.35, idx.size).astype(np.float32)
        base = hz[idx, 0, 0] + below
        hw = brng.uniform(0.05, 0.08, idx.size).astype(np.float32) * (0.7 + 2.0 * below)  # nearer: larger
        wall_h = 0.6 * hw
        roof_h = 0.5 * hw
        dx = np.abs(xx - _r3(x0 + hw / 2))
        wall = (dx < _r3(hw / 2)) & (yy < _r3(base)) & (yy >= _r3(base - wall_h))
        # triangle roof: narrower towards its ridge
        top = _r3(base - wall_h)
        roof = (yy < top) & (yy >= top - _r3(roof_h) * (1.0 - dx / _r3(hw / 2 + np.float32(1e-6))))
        roof &= dx < _r3(hw / 2 + 0.01)
        tone = brng.uniform(0.8, 1.1, idx.size)[:, None]
        wc = (_HOUSE_WALL * tone).astype(np.float32)[:, None, None, :]
        rc_ = (_HOUSE_ROOF * tone).astype(np.float32)[:, None, None, :]
        sub = img[idx]
        sub = np.where(wall[..., None], wc, sub)
        img[idx] = np.where(roof[..., None], rc_, sub)
    return img


def _draw_road(img: F32, hz: F32, xx: F32, yy: F32) -> F32:
    """A road with a dashed centre line, narrowing toward the horizon (street-view camera)."""
    half = 0.02 + 0.28 * np.clip((yy - hz) / (1 - hz + 1e-3), 0, 1)
    road = (np.abs(xx - 0.5) < half) & (yy > hz)
    dash = (np.abs(xx - 0.5) < 0.012 + 0.02 * (yy - hz)) & (np.sin(2 * np.pi * 12 * yy / (yy - hz + 0.1)) > 0)
    rc = np.where(dash[..., None], np.float32(0.85), np.float32(0.28))
    return np.where(road[..., None], rc * np.ones(3, np.float32), img)


def _render_batch(scene: _Scene, sl: slice, cam: Camera, brng: np.random.Generator, xx: F32, yy: F32) -> U8:
    """Render the images of one batch: landscape, buildings, farmsteads, road, then camera and noise."""
    m = sl.stop - sl.start
    params = scene.params
    hz = _col(params["horizon"][sl], m)
    img = _landscape(scene, sl, hz, xx, yy)
    img = _draw_buildings(img, scene.n_build[sl], params["max_h"][sl], hz, brng, xx, yy)
    img = _draw_farmsteads(img, scene.n_huts[sl], hz, brng, xx, yy)
    if cam.road:
        img = _draw_road(img, hz, xx, yy)
    # --- camera, exposure, noise
    img = img * np.asarray(cam.balance, np.float32) * _col(params["gain"][sl], m)[..., None]
    img = img + brng.normal(0.0, 0.045, img.shape).astype(np.float32)
    for _ in range(cam.blur):
        img = _box_blur(img.astype(np.float32))
    out: U8 = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def render_images(
    inputs: RenderInputs,
    image_size: int,
    style: str,
    seed: int,
    fields: WorldFields,
    stream: str = "images",
) -> U8:
    """Render ``n`` RGB images (``n x S x S x 3`` uint8) from land cover, population and regional style.

    Deterministic for ``(seed, stream)``; vectorised over batches of :data:`BATCH` images.
    """
    cam = CAMERAS[style]
    n = len(inputs.lc_code)
    s = image_size
    scene = _draw_scene(inputs, cam, seed, fields, stream)
    out = np.empty((n, s, s, 3), np.uint8)
    yy = cast(F32, ((np.arange(s, dtype=np.float32) + 0.5) / s)[None, :, None])  # pixel centres, float32
    xx = cast(F32, ((np.arange(s, dtype=np.float32) + 0.5) / s)[None, None, :])
    for b0 in range(0, n, BATCH):
        b1 = min(n, b0 + BATCH)
        brng = stream_rng(seed, stream, "batch", b0)
        out[b0:b1] = _render_batch(scene, slice(b0, b1), cam, brng, xx, yy)
    return out
