"""GeoCLIP's location encoder (mirror of ``geoclip.model.location_encoder``), GPS gallery, shipped files."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812 (torch convention)
from torch import Tensor, nn

from geoens.core.types import F32Array

log = logging.getLogger("geoens.geoclip")

#: Size of GeoCLIP's shared image/location embedding.
EMBED_DIM = 512
#: The random-Fourier-feature scales of GeoCLIP's hierarchical location encoder (2^0, 2^4, 2^8).
DEFAULT_SIGMAS: tuple[float, ...] = (1.0, 16.0, 256.0)
#: Hidden width of each location-encoder capsule.
CAPSULE_WIDTH = 1024
#: Number of random Fourier frequencies per capsule (cos + sin gives 2x this).
RFF_SIZE = 256


class GeoClipError(ValueError):
    """Bad GeoCLIP input: a partition file, an embedding cache, weights or a model file."""


# --------------------------------------------------------------------------------------------------
# Shipped files of the PyPI geoclip wheel
# --------------------------------------------------------------------------------------------------


def geoclip_package_dir() -> Path:
    """Folder of the installed ``geoclip`` package, found without importing it.

    Raises:
        GeoClipError: If ``geoclip`` is not installed.

    """
    spec = importlib.util.find_spec("geoclip")
    if spec is None or not spec.submodule_search_locations:
        raise GeoClipError("the 'geoclip' package is not installed (pip install geoclip==1.3.0)")
    return Path(next(iter(spec.submodule_search_locations)))


def weights_dir() -> Path:
    """Folder of GeoCLIP's shipped weights (``location_encoder_weights.pth`` and friends)."""
    return geoclip_package_dir() / "model" / "weights"


def gps_gallery_path() -> Path:
    """GeoCLIP's 100K GPS gallery CSV (``LAT,LON``)."""
    return geoclip_package_dir() / "model" / "gps_gallery" / "coordinates_100K.csv"


def load_gps_gallery(path: str | Path | None = None) -> F32Array:
    """GeoCLIP's GPS gallery as an ``(n, 2)`` float32 array of ``(lat, lon)`` degrees.

    Raises:
        GeoClipError: If the file lacks the ``LAT``/``LON`` columns.

    """
    path = Path(path) if path is not None else gps_gallery_path()
    df = pd.read_csv(path)
    if not {"LAT", "LON"} <= set(df.columns):
        raise GeoClipError(f"{path}: GPS gallery needs columns LAT, LON, got {list(df.columns)}")
    return df[["LAT", "LON"]].to_numpy(np.float32)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_logit_scale(path: str | Path | None = None) -> float:
    """GeoCLIP's trained logit scale as the *multiplicative* factor ``exp(stored)`` (about 39.7).

    GeoCLIP stores ``log(scale)`` (CLIP's parametrisation) and multiplies the cosines by ``scale.exp()``.
    """
    path = Path(path) if path is not None else weights_dir() / "logit_scale_weights.pth"
    value = torch.load(path, map_location="cpu", weights_only=True)
    return float(torch.as_tensor(value).exp())


# --------------------------------------------------------------------------------------------------
# Location encoder (mirror of geoclip.model.location_encoder)
# --------------------------------------------------------------------------------------------------


def equal_earth_projection(latlon: Tensor) -> Tensor:
    """Equal Earth projection of ``(N, 2)`` ``(lat, lon)`` degrees, scaled as GeoCLIP does (``* 66.5 / 180``).

    Same operations, in the same order, as ``geoclip.model.location_encoder.equal_earth_projection``.
    """
    a1, a2, a3, a4, sf = 1.340264, -0.081106, 0.000893, 0.003796, 66.50336
    lat = torch.deg2rad(latlon[:, 0])
    lon = torch.deg2rad(latlon[:, 1])
    sqrt3 = torch.sqrt(torch.tensor(3.0))
    theta = torch.asin((sqrt3 / 2) * torch.sin(lat))
    denominator = 3 * (9 * a4 * theta**8 + 7 * a3 * theta**6 + 3 * a2 * theta**2 + a1)
    x = (2 * sqrt3 * lon * torch.cos(theta)) / denominator
    y = a4 * theta**9 + a3 * theta**7 + a2 * theta**3 + a1 * theta
    return (torch.stack((x, y), dim=1) * sf) / 180


class GaussianFourierFeatures(nn.Module):
    """Random Fourier features ``[cos(2 pi v B^T), sin(2 pi v B^T)]`` with a fixed matrix ``b``."""

    def __init__(self, sigma: float, input_size: int = 2, encoded_size: int = RFF_SIZE) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.randn(encoded_size, input_size) * sigma, requires_grad=False)

    def forward(self, v: Tensor) -> Tensor:
        """Encode ``(N, input_size)`` to ``(N, 2 * encoded_size)``."""
        vp = 2 * np.pi * v @ self.b.T
        return torch.cat((torch.cos(vp), torch.sin(vp)), dim=-1)


class LocationCapsule(nn.Module):
    """One scale of the hierarchy: RFF encoding, three ReLU layers of 1024, a linear head to 512."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.capsule = nn.Sequential(
            GaussianFourierFeatures(sigma),
            nn.Linear(2 * RFF_SIZE, CAPSULE_WIDTH),
            nn.ReLU(),
            nn.Linear(CAPSULE_WIDTH, CAPSULE_WIDTH),
            nn.ReLU(),
            nn.Linear(CAPSULE_WIDTH, CAPSULE_WIDTH),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Linear(CAPSULE_WIDTH, EMBED_DIM))

    def forward(self, x: Tensor) -> Tensor:
        """Projected coordinates ``(N, 2)`` -> ``(N, 512)``."""
        out: Tensor = self.head(self.capsule(x))
        return out


class LocationEncoder(nn.Module):
    """GeoCLIP's hierarchical location encoder: sum of one capsule per RFF scale.

    Its state-dict keys (``LocEnc{i}.capsule.{j}...``, ``LocEnc{i}.head.0...``) are those of GeoCLIP's file.
    """

    def __init__(self, sigmas: Sequence[float] = DEFAULT_SIGMAS) -> None:
        super().__init__()
        self.sigmas = tuple(float(s) for s in sigmas)
        for i, s in enumerate(self.sigmas):
            self.add_module(f"LocEnc{i}", LocationCapsule(s))

    def forward(self, latlon: Tensor) -> Tensor:
        """``(N, 2)`` ``(lat, lon)`` degrees -> unnormalised ``(N, 512)`` embeddings."""
        x = equal_earth_projection(latlon)
        out = torch.zeros(x.shape[0], EMBED_DIM, device=x.device)
        for i in range(len(self.sigmas)):
            out += self.get_submodule(f"LocEnc{i}")(x)
        return out


def load_location_encoder(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> LocationEncoder:
    """GeoCLIP's location encoder with the shipped (or given) weights, frozen and in eval mode.

    Raises:
        GeoClipError: If the weights file does not match the architecture.

    """
    path = Path(path) if path is not None else weights_dir() / "location_encoder_weights.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    n_scales = len({k.split(".")[0] for k in state if k.startswith("LocEnc")})
    sigmas = DEFAULT_SIGMAS if n_scales == len(DEFAULT_SIGMAS) else None
    if sigmas is None:
        raise GeoClipError(f"{path}: expected {len(DEFAULT_SIGMAS)} location capsules, found {n_scales}")
    enc = LocationEncoder(sigmas)
    try:
        enc.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise GeoClipError(f"{path}: not a GeoCLIP location-encoder state dict: {exc}") from exc
    enc.requires_grad_(False)
    return enc.to(device).eval()


def _as_latlon_tensor(lat: npt.ArrayLike, lon: npt.ArrayLike) -> Tensor:
    lat_a = np.asarray(lat, dtype=np.float64).reshape(-1)
    lon_a = np.asarray(lon, dtype=np.float64).reshape(-1)
    if lat_a.shape != lon_a.shape:
        raise GeoClipError(f"lat and lon differ in length: {lat_a.size} vs {lon_a.size}")
    bad = ~np.isfinite(lat_a) | ~np.isfinite(lon_a) | (np.abs(lat_a) > 90) | (np.abs(lon_a) > 180)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise GeoClipError(f"invalid coordinate at index {i}: lat={lat_a[i]}, lon={lon_a[i]}")
    return torch.from_numpy(np.stack([lat_a, lon_a], axis=1).astype(np.float32))


@torch.no_grad()
def embed_locations(
    lat: npt.ArrayLike,
    lon: npt.ArrayLike,
    encoder: LocationEncoder | None = None,
    batch_size: int = 4096,
    normalize: bool = True,
) -> F32Array:
    """Embed GPS points with GeoCLIP's location encoder, in batches.

    Args:
        lat: Latitudes (degrees).
        lon: Longitudes (degrees).
        encoder: A loaded encoder (default: :func:`load_location_encoder`).
        batch_size: Points per forward pass.
        normalize: L2-normalise each embedding (GeoCLIP normalises before the cosine).

    Returns:
        ``(N, 512)`` float32 embeddings.

    Raises:
        GeoClipError: On coordinates that are not finite or out of range.

    """
    pts = _as_latlon_tensor(lat, lon)
    enc = encoder if encoder is not None else load_location_encoder()
    device = next(enc.parameters()).device
    out = np.empty((pts.shape[0], EMBED_DIM), dtype=np.float32)
    for start in range(0, pts.shape[0], batch_size):
        emb = enc(pts[start : start + batch_size].to(device))
        if normalize:
            emb = F.normalize(emb, dim=1)
        out[start : start + batch_size] = emb.cpu().numpy()
    return out
