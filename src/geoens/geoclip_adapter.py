"""GeoCLIP as the second base model, scored on the fine S2 cells (DESIGN section 4).

GeoCLIP (Vivanco Cepeda et al. 2023) embeds a GPS point with a *location encoder*: the point is projected
with the Equal Earth projection, encoded with random Fourier features at three scales
(``sigma = 2^0, 2^4, 2^8``), each scale goes through its own MLP "capsule", and the three 512-d outputs are
summed (the hierarchy). An image tower maps an image into the same space; the score of a location is
``exp(logit_scale) * cos(image embedding, location embedding)`` and GeoCLIP's ``predict()`` takes the
softmax over its 100K GPS gallery, re-embedding the gallery on every call.

Here the candidate locations are the fine S2 cells (each cell's mean training location, as the paper does),
so a probability vector lives on the same classes as GeoEstimation's:
``p = softmax(scale * cos(image embedding, location embedding of each fine cell's mean location))``.
The cell embeddings are computed once per partition and cached in a Parquet file
(:func:`cell_embeddings`), then reused for every image.

The location encoder here mirrors ``geoclip.model.location_encoder.LocationEncoder`` layer for layer (same
state-dict keys) and loads the weights file shipped in the PyPI ``geoclip`` wheel, without importing the
``geoclip`` package, whose import pulls in ``transformers`` and whose ``GeoCLIP()`` downloads CLIP.
``tests/test_geoclip.py`` checks that both give the same embeddings.

Two image towers:

* ``clip``: GeoCLIP's own, CLIP ViT-L/14 (``transformers``, from the local Hugging Face cache only) plus the
  shipped MLP (:class:`ClipImageTower`). A missing cache raises :class:`ClipNotCachedError` naming the model
  and the download command.
* ``trained``: a small timm backbone plus a projection to 512-d, trained here with GeoCLIP's contrastive
  objective into the *frozen* location-embedding space (:class:`TrainedImageTower`, :func:`train_tower`);
  the demo world uses it, since no pretrained weights can be downloaded there.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F  # noqa: N812 (torch convention)
from torch import Tensor, nn

from geoens.checkpoint import Checkpointer, ProgressLog, StopSignals, rng_state, set_rng_state
from geoens.constants import CHECKPOINT_EVERY_STEPS, PROGRESS_EVERY_S
from geoens.io import atomic_path, write_json
from geoens.models import build_backbone
from geoens.train import TrainerConfig

log = logging.getLogger("geoens.geoclip")

#: Size of GeoCLIP's shared image/location embedding.
EMBED_DIM = 512
#: The random-Fourier-feature scales of GeoCLIP's hierarchical location encoder (2^0, 2^4, 2^8).
DEFAULT_SIGMAS: tuple[float, ...] = (1.0, 16.0, 256.0)
#: Hidden width of each location-encoder capsule.
CAPSULE_WIDTH = 1024
#: Number of random Fourier frequencies per capsule (cos + sin gives 2x this).
RFF_SIZE = 256
#: Default Hugging Face id of GeoCLIP's image backbone.
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
#: Projection width of CLIP ViT-L/14 image features (input of GeoCLIP's image MLP).
CLIP_FEATURE_DIM = 768
#: CLIP's image normalisation.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Upper bound on the (multiplicative) logit scale, as in CLIP.
MAX_LOGIT_SCALE = 100.0
#: Columns of the GeoEstimation partition CSV that the cell embeddings need.
PARTITION_COLUMNS = ("class_label", "hex_id", "latitude_mean", "longitude_mean")
#: Format version of the cell-embedding cache (bump when its layout or meaning changes).
CACHE_VERSION = "1"
#: Format version of the tower's training checkpoint (``results/models/geoclip_tower/checkpoint.pt``).
TOWER_CHECKPOINT_VERSION = 1

FloatArray = npt.NDArray[np.float32]


class GeoClipError(ValueError):
    """Bad GeoCLIP input: a partition file, an embedding cache, weights or a model file."""


class ClipNotCachedError(FileNotFoundError):
    """CLIP ViT-L/14 (GeoCLIP's image backbone) is not in the local Hugging Face cache."""


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


def load_gps_gallery(path: str | Path | None = None) -> FloatArray:
    """GeoCLIP's GPS gallery as an ``(n, 2)`` float32 array of ``(lat, lon)`` degrees.

    Raises:
        GeoClipError: If the file lacks the ``LAT``/``LON`` columns.

    """
    path = Path(path) if path is not None else gps_gallery_path()
    df = pd.read_csv(path)
    if not {"LAT", "LON"} <= set(df.columns):
        raise GeoClipError(f"{path}: GPS gallery needs columns LAT, LON, got {list(df.columns)}")
    return df[["LAT", "LON"]].to_numpy(np.float32)


def _file_sha256(path: Path) -> str:
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
) -> FloatArray:
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


# --------------------------------------------------------------------------------------------------
# Fine-cell embeddings, cached once per partition
# --------------------------------------------------------------------------------------------------


def read_partition(path: str | Path) -> pd.DataFrame:
    """Read a GeoEstimation partition CSV (two comment lines, then the header), sorted by ``class_label``.

    Raises:
        GeoClipError: Naming the file and the problem (missing column, bad labels or coordinates).

    """
    path = Path(path)
    try:
        df = pd.read_csv(path, skiprows=2, dtype={"hex_id": str})
    except (OSError, ValueError) as exc:
        raise GeoClipError(f"{path}: cannot read partition CSV: {exc}") from exc
    missing = [c for c in PARTITION_COLUMNS if c not in df.columns]
    if missing:
        raise GeoClipError(
            f"{path}: partition CSV lacks column(s) {missing} (expected 2 comment lines, then "
            f"class_label,hex_id,imgs_per_cell,latitude_mean,longitude_mean), got {list(df.columns)}"
        )
    if df.empty:
        raise GeoClipError(f"{path}: partition CSV has no cells")
    labels = df["class_label"].to_numpy()
    if not np.array_equal(np.sort(labels), np.arange(len(df))):
        raise GeoClipError(f"{path}: class_label must be 0..{len(df) - 1}, each once")
    for col, lim in (("latitude_mean", 90.0), ("longitude_mean", 180.0)):
        vals = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(vals) | (np.abs(vals) > lim)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise GeoClipError(f"{path}: bad {col} {df[col].iloc[row]} in data row {row + 1}")
        df[col] = vals
    return df.sort_values("class_label").reset_index(drop=True)


def _cache_key(partition: pd.DataFrame, weights_path: Path) -> str:
    h = hashlib.sha256()
    h.update(CACHE_VERSION.encode())
    h.update(_file_sha256(weights_path).encode())
    cells = partition[["class_label", "latitude_mean", "longitude_mean"]]
    h.update(np.ascontiguousarray(cells.to_numpy(np.float64)).tobytes())
    return h.hexdigest()


def write_cell_embeddings(path: str | Path, partition: pd.DataFrame, emb: FloatArray, key: str) -> None:
    """Write fine-cell embeddings as Parquet (one row per cell, ``embedding`` fixed-size list<float32>)."""
    flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "class_label": pa.array(partition["class_label"].to_numpy(np.int32)),
            "hex_id": pa.array(partition["hex_id"].astype(str).to_list(), type=pa.string()),
            "latitude_mean": pa.array(partition["latitude_mean"].to_numpy(np.float64)),
            "longitude_mean": pa.array(partition["longitude_mean"].to_numpy(np.float64)),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]),
        }
    ).replace_schema_metadata({"geoens.cache_key": key, "geoens.cache_version": CACHE_VERSION})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_cell_embeddings(path: str | Path) -> tuple[FloatArray, str]:
    """Read a cell-embedding Parquet file: ``((n_cells, 512) float32 in class_label order, cache key)``.

    Raises:
        GeoClipError: If the file lacks the expected columns or the classes are not ``0..n-1``.

    """
    path = Path(path)
    table = pq.read_table(path)
    if not {"class_label", "embedding"} <= set(table.column_names):
        raise GeoClipError(f"{path}: not a cell-embedding file (columns {table.column_names})")
    labels = table["class_label"].to_numpy()
    if not np.array_equal(labels, np.arange(len(labels))):
        raise GeoClipError(f"{path}: class_label must be 0..{len(labels) - 1} in order")
    emb = fixed_size_list_to_numpy(table["embedding"])
    meta = table.schema.metadata or {}
    key = meta.get(b"geoens.cache_key", b"").decode()
    return emb, key


def fixed_size_list_to_numpy(column: pa.ChunkedArray | pa.Array) -> FloatArray:
    """Convert a fixed-size-list<float32> column to a 2-D float32 array."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = arr.type.list_size
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(-1, width)


def cell_embeddings(
    partition_csv: str | Path,
    cache_path: str | Path | None = "results/geoclip/cell_embeddings.parquet",
    encoder: LocationEncoder | None = None,
    weights_path: str | Path | None = None,
    batch_size: int = 4096,
) -> FloatArray:
    """L2-normalised GeoCLIP embeddings of each fine cell's mean location, cached once per partition.

    The cache file stores a key (hash of the cells' labels and mean locations, of the encoder weights file
    and of the cache version); a cache whose key matches is loaded instead of re-embedding, any other is
    rebuilt. So one partition is embedded once and every image reuses the result.

    Args:
        partition_csv: GeoEstimation partition CSV (fine level).
        cache_path: Parquet cache (``None``: no cache).
        encoder: A loaded encoder; default: the shipped weights (loaded only when the cache misses).
        weights_path: Location-encoder weights file (default: the shipped one).
        batch_size: Points per forward pass.

    Returns:
        ``(n_cells, 512)`` float32, row ``i`` = class label ``i``.

    """
    partition = read_partition(partition_csv)
    wpath = Path(weights_path) if weights_path is not None else weights_dir() / "location_encoder_weights.pth"
    key = _cache_key(partition, wpath)
    if cache_path is not None and Path(cache_path).exists():
        try:
            emb, cached_key = read_cell_embeddings(cache_path)
        except (GeoClipError, pa.ArrowException, OSError) as exc:
            log.warning("ignoring unreadable cell-embedding cache %s: %s", cache_path, exc)
        else:
            if cached_key == key and emb.shape[0] == len(partition):
                log.info("cell embeddings: loaded %d cells from cache %s", emb.shape[0], cache_path)
                return emb
            log.info("cell-embedding cache %s is stale (other partition or weights); rebuilding", cache_path)
    enc = encoder if encoder is not None else load_location_encoder(wpath)
    emb = embed_locations(
        partition["latitude_mean"].to_numpy(), partition["longitude_mean"].to_numpy(), enc, batch_size
    )
    log.info("cell embeddings: embedded %d cells of %s", emb.shape[0], partition_csv)
    if cache_path is not None:
        write_cell_embeddings(cache_path, partition, emb, key)
    return emb


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def score_cells(
    image_embeddings: npt.ArrayLike | Tensor,
    cell_embeddings: npt.ArrayLike | Tensor,
    logit_scale: float,
) -> FloatArray:
    """Cell probabilities ``softmax(logit_scale * cos(image embedding, cell embedding))``.

    Args:
        image_embeddings: ``(N, D)`` image embeddings (any norm).
        cell_embeddings: ``(n_cells, D)`` location embeddings (any norm).
        logit_scale: The multiplicative scale (GeoCLIP's ``exp(stored logit scale)``, about 39.7).

    Returns:
        ``(N, n_cells)`` float32 probabilities; softmax in float64, so each row sums to 1.

    """
    img, cells = (
        x.detach().to("cpu", torch.float64)
        if isinstance(x, Tensor)
        else torch.from_numpy(np.array(x, np.float64))
        for x in (image_embeddings, cell_embeddings)
    )
    if img.ndim != 2 or cells.ndim != 2 or img.shape[1] != cells.shape[1]:
        raise GeoClipError(
            f"embedding shapes do not match: images {tuple(img.shape)}, cells {tuple(cells.shape)}"
        )
    if not math.isfinite(logit_scale) or logit_scale <= 0:
        raise GeoClipError(f"logit_scale must be a positive number, got {logit_scale}")
    logits = logit_scale * (F.normalize(img, dim=1) @ F.normalize(cells, dim=1).T)
    probs: FloatArray = torch.softmax(logits, dim=1).numpy().astype(np.float32)
    return probs


# --------------------------------------------------------------------------------------------------
# Image towers
# --------------------------------------------------------------------------------------------------


class TrainedImageTower(nn.Module):
    """A timm backbone plus a two-layer projection (as GeoCLIP's image MLP) to the 512-d location space.

    Attributes:
        logit_scale_log: Log of the logit scale (CLIP parametrisation), learned with the tower.

    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool = False,
        init_logit_scale: float = 1.0 / 0.07,
        pretrained_file: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.backbone, feat_dim = build_backbone(
            backbone, pretrained=pretrained, num_classes=0, pretrained_file=pretrained_file
        )
        self.proj = nn.Sequential(nn.Linear(feat_dim, EMBED_DIM), nn.ReLU(), nn.Linear(EMBED_DIM, EMBED_DIM))
        self.logit_scale_log = nn.Parameter(torch.tensor(math.log(init_logit_scale), dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        """Images ``(N, 3, H, W)`` -> unnormalised ``(N, 512)`` embeddings."""
        out: Tensor = self.proj(self.backbone(x))
        return out

    def logit_scale(self) -> Tensor:
        """Return the multiplicative logit scale, clamped to ``MAX_LOGIT_SCALE``."""
        return self.logit_scale_log.exp().clamp(max=MAX_LOGIT_SCALE)


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants as hf_constants

        return str(hf_constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
        return os.path.join(home, "hub")


def resolve_clip_model(model_id: str = DEFAULT_CLIP_MODEL, cache_dir: str | Path | None = None) -> Path:
    """Local folder of a CLIP model: ``model_id`` itself if it is a folder, else its local HF-cache snapshot.

    Never downloads.

    Raises:
        ClipNotCachedError: Naming the model, the download command and the cache folder.

    """
    if Path(model_id).is_dir():
        return Path(model_id)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, local_files_only=True, cache_dir=cache_dir))
    except Exception as exc:  # LocalEntryNotFoundError, invalid repo id, offline errors...
        raise ClipNotCachedError(
            f"GeoCLIP's image tower needs the CLIP model '{model_id}' (config key geoclip.clip_model) in the "
            f"local Hugging Face cache ({cache_dir or _hf_cache_dir()}, set by HF_HOME), and it is not "
            "there. "
            f"Download it once on a machine with internet: `hf download {model_id}` "
            "(the huggingface_hub client's command), with HF_HOME pointing at the cache this workflow uses; "
            f"or set geoclip.image_tower: trained. ({type(exc).__name__}: {exc})"
        ) from exc


class ClipImageTower(nn.Module):
    """GeoCLIP's own image tower: frozen CLIP ViT-L/14 image features + the shipped 768->768->512 MLP."""

    def __init__(
        self,
        model_id: str = DEFAULT_CLIP_MODEL,
        mlp_weights: str | Path | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        local = resolve_clip_model(model_id, cache_dir)
        from transformers import CLIPModel

        self.clip = CLIPModel.from_pretrained(str(local), local_files_only=True)
        self.clip.requires_grad_(False)
        self.mlp = nn.Sequential(
            nn.Linear(CLIP_FEATURE_DIM, CLIP_FEATURE_DIM), nn.ReLU(), nn.Linear(CLIP_FEATURE_DIM, EMBED_DIM)
        )
        path = (
            Path(mlp_weights) if mlp_weights is not None else weights_dir() / "image_encoder_mlp_weights.pth"
        )
        self.mlp.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def forward(self, x: Tensor) -> Tensor:
        """CLIP-normalised 224 x 224 images -> unnormalised ``(N, 512)`` embeddings."""
        feats = self.clip.get_image_features(pixel_values=x)
        if not isinstance(feats, Tensor):  # transformers 5 may return a model output
            feats = getattr(feats, "pooler_output", None)
            if feats is None:
                feats = self.clip.get_image_features(pixel_values=x, return_dict=False)[0]
        out: Tensor = self.mlp(feats)
        return out


def clip_transform() -> Callable[[Any], Tensor]:
    """CLIP's eval preprocessing (bicubic resize to 224, centre crop, CLIP normalisation)."""
    from torchvision import transforms as T  # noqa: N812 (torchvision convention)

    return T.Compose(
        [
            T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


# --------------------------------------------------------------------------------------------------
# Contrastive training of the small tower into the frozen location space
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TowerTrainConfig(TrainerConfig):
    """Hyper-parameters of :func:`train_tower`: the ``geoclip.tower`` trainer settings plus GeoCLIP's extras.

    Attributes (beyond :class:`geoens.train.TrainerConfig`'s):
        queue_size: Dynamic queue of recent batches' GPS embeddings used as negatives (GeoCLIP: 4096).
        gallery_negatives: GPS-gallery points (sampled once, seeded) used as extra fixed negatives.
        learn_logit_scale: Learn the logit scale (initialised from GeoCLIP's shipped value).
        seed: Random seed.
        device: ``auto``, ``cpu`` or ``cuda``.
        num_workers: DataLoader workers.

    """

    queue_size: int = 1024
    gallery_negatives: int = 2048
    learn_logit_scale: bool = True
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **overrides: Any) -> TowerTrainConfig:
        """Build from the ``geoclip.tower`` mapping plus the ``geoclip`` section's extras.

        Raises:
            ValueError: On a key that is not a setting (naming it).

        """
        return cls.from_mapping({**cfg, **overrides})


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise GeoClipError("config asks for device 'cuda' but torch sees no GPU")
    return torch.device(device)


class GpsQueue:
    """FIFO queue of location embeddings of recent batches (GeoCLIP's ``dequeue_and_enqueue``).

    The location encoder is frozen, so the queue stores embeddings rather than GPS points.
    """

    def __init__(self, size: int, init: Tensor) -> None:
        if size < 0:
            raise GeoClipError(f"queue_size must be >= 0, got {size}")
        self.size = size
        self.buf = init[:size].clone() if size else init[:0].clone()
        self.ptr = 0

    def get(self) -> Tensor:
        """Return the queued embeddings ``(size, 512)``."""
        return self.buf

    def push(self, emb: Tensor) -> None:
        """Enqueue a batch of embeddings, overwriting the oldest ones."""
        if self.size == 0:
            return
        emb = emb.detach()
        n = emb.shape[0]
        if n >= self.size:
            self.buf.copy_(emb[-self.size :])
            self.ptr = 0
            return
        end = self.ptr + n
        if end <= self.size:
            self.buf[self.ptr : end] = emb
        else:
            first = self.size - self.ptr
            self.buf[self.ptr :] = emb[:first]
            self.buf[: end - self.size] = emb[first:]
        self.ptr = end % self.size


def contrastive_loss(
    img_emb: Tensor, pos_loc_emb: Tensor, neg_loc_emb: Tensor, logit_scale: Tensor
) -> Tensor:
    """GeoCLIP's image-to-GPS loss: cross-entropy of ``scale * cos`` over [batch GPS; negatives].

    Image ``i``'s target is its own GPS, column ``i``; the other images' GPS and the negatives are the rest.
    """
    locs = torch.cat([pos_loc_emb, neg_loc_emb], dim=0)
    logits = logit_scale * (F.normalize(img_emb, dim=1) @ F.normalize(locs, dim=1).T)
    targets = torch.arange(img_emb.shape[0], device=img_emb.device)
    return F.cross_entropy(logits, targets)


Batch = tuple[Tensor, Tensor]
"""A training batch: images ``(B, 3, H, W)`` and ``(B, 2)`` ``(lat, lon)`` degrees."""


@torch.no_grad()
def evaluate_loss(
    tower: TrainedImageTower,
    batches: Iterable[Batch],
    encoder: LocationEncoder,
    negatives: Tensor,
    device: torch.device,
) -> float:
    """Mean contrastive loss over ``batches`` against fixed ``negatives`` (no queue: deterministic)."""
    tower.eval()
    total, count = 0.0, 0
    for images, gps in batches:
        images, gps = images.to(device), gps.to(device, torch.float32)
        loss = contrastive_loss(tower(images), encoder(gps), negatives, tower.logit_scale())
        total += float(loss) * images.shape[0]
        count += images.shape[0]
    return total / max(count, 1)


def train_tower(
    train_batches: Callable[[int, int], Iterable[Batch]],
    val_batches: Callable[[], Iterable[Batch]] | None,
    cfg: TowerTrainConfig,
    encoder: LocationEncoder | None = None,
    gallery: FloatArray | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    *,
    checkpoint: Checkpointer | None = None,
    steps_per_epoch: int | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[TrainedImageTower, list[dict[str, float]]]:
    """Train a small image tower into GeoCLIP's frozen location space with GeoCLIP's objective.

    Each step: image embeddings vs the location embeddings of the batch's own GPS (positives; the other
    images' GPS are negatives too), of a dynamic queue of recent batches' GPS, and of a fixed seeded sample
    of GeoCLIP's GPS gallery; cross-entropy on ``logit_scale * cos``. The location encoder stays frozen.
    The tower with the lowest validation loss is kept (early stopping with ``cfg.patience``).

    With ``checkpoint``, the whole training state (weights, optimizer, schedule, GPS queue, early-stopping
    state, RNG) is saved at every epoch end, every ``checkpoint.every_steps`` steps and after a stop signal
    (then :class:`~geoens.checkpoint.TrainingInterrupted` is raised), and a matching checkpoint is resumed,
    also in the middle of an epoch, ending with the same weights as an uninterrupted run.

    Args:
        train_batches: ``(epoch, first batch) -> iterable of (images, gps)``, shuffled per epoch by the
            caller; a resume asks for the batches from ``first batch`` on (:func:`gps_batches`).
        val_batches: ``() -> iterable of (images, gps)`` or ``None`` (then the last epoch is kept).
        cfg: Hyper-parameters.
        encoder: GeoCLIP's location encoder (default: the shipped weights).
        gallery: ``(n, 2)`` GPS gallery (default: GeoCLIP's 100K gallery).
        on_epoch: Called with each epoch's metrics row.
        checkpoint: Where and when to checkpoint (``None``: no checkpoint, no resume).
        steps_per_epoch: Batches per epoch, for the progress line's ETA (``None``: no ETA).
        progress_every_s: Seconds between in-epoch progress lines (images/s, ETA) in the log.
        on_step: Called with ``(epoch, step)`` after each optimizer step.

    Returns:
        The trained tower (eval mode, on CPU) and one metrics row per epoch
        (``epoch, train_loss, val_loss, logit_scale``).

    """
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    enc = (encoder if encoder is not None else load_location_encoder()).to(device).eval()
    enc.requires_grad_(False)
    gal = gallery if gallery is not None else load_gps_gallery()
    rng = np.random.default_rng(cfg.seed)
    n_gal = min(cfg.gallery_negatives, len(gal))
    gal_idx = np.sort(rng.choice(len(gal), size=n_gal, replace=False)) if n_gal else np.zeros(0, dtype=int)
    with torch.no_grad():
        gal_emb = enc(torch.from_numpy(gal[gal_idx]).to(device)) if n_gal else torch.zeros(0, EMBED_DIM)
        q_idx = rng.choice(len(gal), size=cfg.queue_size, replace=len(gal) < cfg.queue_size)
        queue = GpsQueue(cfg.queue_size, enc(torch.from_numpy(gal[q_idx]).to(device)))
    gal_emb = gal_emb.to(device)

    tower = TrainedImageTower(
        cfg.backbone, cfg.pretrained, init_logit_scale=load_logit_scale(), pretrained_file=cfg.pretrained_file
    ).to(device)
    tower.logit_scale_log.requires_grad_(cfg.learn_logit_scale)
    params = [p for p in tower.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))

    # the loop's state; a checkpoint stores it with the weights, optimizer, schedule, queue and RNG
    st: dict[str, Any] = {
        "epoch": 0, "step": 0, "global_step": 0, "total": 0.0, "count": 0, "history": [],
        "best_loss": math.inf, "best_state": copy.deepcopy(tower.state_dict()), "stale": 0, "done": False,
    }  # fmt: skip
    saved = checkpoint.load("cpu") if checkpoint is not None else None
    if checkpoint is not None and saved is not None:
        tower.load_state_dict(saved["tower"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        queue.buf, queue.ptr = saved["queue"].to(device), int(saved["queue_ptr"])
        set_rng_state(saved["rng"])
        st = saved["state"]
        log.info(
            "geoclip tower: resumed from %s at epoch %d step %d", checkpoint.path, st["epoch"] + 1, st["step"]
        )

    def save() -> None:
        assert checkpoint is not None
        checkpoint.save(
            {
                "tower": tower.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "queue": queue.buf,
                "queue_ptr": queue.ptr,
                "rng": rng_state(),
                "state": st,
            }
        )

    progress = ProgressLog(log, "geoclip tower", cfg.epochs, steps_per_epoch, progress_every_s)
    while st["epoch"] < cfg.epochs and not st["done"]:
        epoch = st["epoch"]
        tower.train()
        progress.start_epoch(epoch)
        for step, (images, gps) in enumerate(train_batches(epoch, st["step"]), start=st["step"] + 1):
            images, gps = images.to(device), gps.to(device, torch.float32)
            with torch.no_grad():
                pos = enc(gps)
            negatives = torch.cat([queue.get(), gal_emb], dim=0)
            loss = contrastive_loss(tower(images), pos, negatives, tower.logit_scale())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            queue.push(pos)
            loss_value = float(loss.detach())
            st["total"] += loss_value * images.shape[0]
            st["count"] += images.shape[0]
            st["step"], st["global_step"] = step, st["global_step"] + 1
            progress.update(step, images.shape[0], loss_value)
            if on_step is not None:
                on_step(epoch, step)
            if checkpoint is not None:
                stop = checkpoint.stop_requested()
                if stop or checkpoint.step_due(st["global_step"]):
                    save()
                    if stop:
                        raise checkpoint.interrupt(epoch, step)
        sched.step()
        row = {
            "epoch": float(epoch),
            "train_loss": st["total"] / max(st["count"], 1),
            "logit_scale": float(tower.logit_scale().detach()),
        }
        if val_batches is not None:
            row["val_loss"] = evaluate_loss(tower, val_batches(), enc, gal_emb, device)
        st["history"].append(row)
        log.info("geoclip tower epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
        if on_epoch is not None:
            on_epoch(row)
        score = row.get("val_loss", row["train_loss"] if val_batches is None else math.inf)
        if val_batches is None or score < st["best_loss"]:
            st.update(best_loss=score, best_state=copy.deepcopy(tower.state_dict()), stale=0)
        else:
            st["stale"] += 1
            if st["stale"] >= cfg.patience:
                log.info(
                    "early stopping after epoch %d (no val improvement in %d epochs)", epoch, st["stale"]
                )
                st["done"] = True
        st.update(epoch=epoch + 1, step=0, total=0.0, count=0)
        if checkpoint is not None:
            save()
            if checkpoint.stop_requested() and st["epoch"] < cfg.epochs and not st["done"]:
                raise checkpoint.interrupt(epoch + 1, 0)
    history: list[dict[str, float]] = st["history"]
    best_state = st["best_state"]
    tower.load_state_dict(best_state)
    return tower.cpu().eval(), history


def save_tower(
    path: str | Path, tower: TrainedImageTower, cfg: TowerTrainConfig, history: list[dict[str, float]]
) -> None:
    """Save a trained tower's weights and metadata (atomic)."""
    payload = {
        "kind": "geoclip_tower",
        "backbone": tower.backbone_name,
        "embed_dim": EMBED_DIM,
        "state_dict": tower.state_dict(),
        "logit_scale": float(tower.logit_scale().detach()),
        "config": asdict(cfg),
        "history": history,
        "location_encoder_sha256": _file_sha256(weights_dir() / "location_encoder_weights.pth"),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_tower(path: str | Path) -> tuple[TrainedImageTower, dict[str, Any]]:
    """Load a tower saved by :func:`save_tower` (eval mode, CPU) and its metadata.

    Raises:
        GeoClipError: If the file is not a GeoCLIP tower.

    """
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("kind") != "geoclip_tower":
        raise GeoClipError(f"{path}: not a GeoCLIP image tower saved by geoens (missing kind=geoclip_tower)")
    tower = TrainedImageTower(payload["backbone"], pretrained=False)
    tower.load_state_dict(payload["state_dict"])
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return tower.eval(), meta


# --------------------------------------------------------------------------------------------------
# Batch inference
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def embed_images(
    tower: nn.Module, batches: Iterable[tuple[Tensor, Sequence[str]]], device: str | torch.device = "cpu"
) -> Iterator[tuple[list[str], FloatArray]]:
    """Yield ``(image_ids, (B, 512) float32 embeddings)`` per batch of ``(images, ids)``."""
    tower = tower.to(device).eval()
    for images, ids in batches:
        emb = tower(images.to(device)).float().cpu().numpy()
        yield list(ids), emb


def iter_probs(
    tower: nn.Module,
    batches: Iterable[tuple[Tensor, Sequence[str]]],
    cells: FloatArray,
    logit_scale: float,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[list[str], FloatArray]]:
    """Yield ``(image_ids, (B, n_cells) float32)`` cell probabilities per batch.

    The cell embeddings ``cells`` are computed once (:func:`cell_embeddings`) and reused for every batch.
    """
    cells64 = torch.from_numpy(np.array(cells, dtype=np.float64))
    for batch_ids, emb in embed_images(tower, batches, device):
        yield batch_ids, score_cells(emb, cells64, logit_scale)


def predict_probs(
    tower: nn.Module,
    batches: Iterable[tuple[Tensor, Sequence[str]]],
    cells: FloatArray,
    logit_scale: float,
    device: str | torch.device = "cpu",
) -> tuple[list[str], FloatArray]:
    """Cell probabilities of every image in memory: ``(image_ids, (N, n_cells) float32)``."""
    ids: list[str] = []
    parts: list[FloatArray] = []
    for batch_ids, probs in iter_probs(tower, batches, cells, logit_scale, device):
        ids.extend(batch_ids)
        parts.append(probs)
    out = np.concatenate(parts, axis=0) if parts else np.zeros((0, cells.shape[0]), np.float32)
    return ids, out


def prediction_schema(n_classes: int) -> pa.Schema:
    """Return the predictions schema: ``image_id``, ``probs`` fixed_size_list<float32>, ``top_class``."""
    return pa.schema(
        [("image_id", pa.string()), ("probs", pa.list_(pa.float32(), n_classes)), ("top_class", pa.int32())]
    )


def prediction_table(image_ids: Sequence[str], probs: FloatArray) -> pa.Table:
    """One batch of predictions as an Arrow table of :func:`prediction_schema`.

    Raises:
        GeoClipError: If the ids and the probability rows differ in number.

    """
    probs = np.ascontiguousarray(probs, dtype=np.float32)
    if probs.ndim != 2 or probs.shape[0] != len(image_ids):
        raise GeoClipError(f"{len(image_ids)} image ids but probs of shape {probs.shape}")
    top = probs.argmax(axis=1).astype(np.int32) if len(probs) else np.zeros(0, np.int32)
    return pa.table(
        {
            "image_id": pa.array([str(i) for i in image_ids], type=pa.string()),
            "probs": pa.FixedSizeListArray.from_arrays(
                pa.array(probs.reshape(-1), pa.float32()), probs.shape[1]
            ),
            "top_class": pa.array(top, pa.int32()),
        },
        schema=prediction_schema(probs.shape[1]),
    )


def write_predictions(
    path: str | Path, chunks: Iterable[tuple[Sequence[str], FloatArray]], n_classes: int
) -> int:
    """Stream prediction batches to a Parquet file of :func:`prediction_schema`, atomically.

    Returns:
        The number of rows written.

    """
    n = 0
    schema = prediction_schema(n_classes)
    with atomic_path(path) as tmp, pq.ParquetWriter(str(tmp), schema) as writer:
        for ids, probs in chunks:
            writer.write_table(prediction_table(ids, probs))
            n += len(ids)
    return n


# --------------------------------------------------------------------------------------------------
# Datasets and whole-stage entry points (called by workflow_scripts/geoclip_*.py)
# --------------------------------------------------------------------------------------------------


def read_split(labels: str | Path, split: str | None) -> pd.DataFrame:
    """``image_id, lat, lon`` of the label rows of ``split`` (``None``: all rows), in file order.

    Raises:
        GeoClipError: If no row has that split.

    """
    from geoens.data import read_label_parts

    cols = ["image_id", "lat", "lon"] + (["split"] if split is not None else [])
    df = read_label_parts(labels, columns=cols)
    if split is not None:
        df = df[df["split"] == split]
    if df.empty:
        raise GeoClipError(f"{labels}: no label rows with split == {split!r}")
    return df[["image_id", "lat", "lon"]].reset_index(drop=True)


def gps_batches(
    source: Any,
    labels: pd.DataFrame,
    transform: Any,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    skipped: list[int] | None = None,
) -> Callable[..., Iterator[Batch]]:
    """``(epoch, first batch = 0) -> iterator of (images, gps)`` over the labelled images of ``source``.

    Undecodable or missing images are dropped (their indices appended to ``skipped``). Shuffling and
    augmentation are seeded by ``(seed, epoch)``; starting at a later batch (a mid-epoch resume) gives the
    rest of the same epoch's batches without reading the images before it.
    """
    from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

    from geoens.checkpoint import SkipSampler
    from geoens.data import ImageDataset, collate_skip

    coords = torch.from_numpy(np.array(labels[["lat", "lon"]].to_numpy(np.float32)))
    ds = ImageDataset(source, labels["image_id"].tolist(), np.arange(len(labels)), transform, seed=seed)

    def run(epoch: int, start: int = 0) -> Iterator[Batch]:
        ds.set_epoch(epoch)
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = RandomSampler(ds, generator=gen) if shuffle else SequentialSampler(ds)
        loader = DataLoader(
            ds, batch_size=batch_size, sampler=SkipSampler(order, start * batch_size), generator=gen,
            num_workers=num_workers, collate_fn=collate_skip, drop_last=False,
        )  # fmt: skip
        for batch in loader:
            if skipped is not None and batch.skipped:
                skipped.extend(batch.skipped)
            if len(batch) == 0:
                continue
            yield batch.images, coords[batch.indices]

    return run


def cached_gps_batches(
    cache: Any,
    labels: pd.DataFrame,
    cfg: TowerTrainConfig,
    train: bool,
    skipped: list[int] | None = None,
) -> Callable[..., Iterator[Batch]]:
    """:func:`gps_batches` over a decoded-image cache (:mod:`geoens.imagecache`), in this process.

    The order is a permutation seeded by ``(seed, epoch)`` (training) or the label order (validation); the
    augmentation of ``cfg.augment`` is drawn per ``(seed, epoch, index)`` on whole batches.
    """
    from geoens.imagecache import CachedLoader, SeededOrder
    from geoens.models import backbone_norm

    coords = torch.from_numpy(np.array(labels[["lat", "lon"]].to_numpy(np.float32)))
    mean, std = backbone_norm(cfg.backbone)
    order = SeededOrder(len(labels), cfg.seed, shuffle=train)
    loader = CachedLoader(
        cache, labels["image_id"].astype(str).tolist(), np.arange(len(labels)), order, cfg.batch_size,
        cfg.image_size, mean, std, augment=cfg.augment if train else None, seed=cfg.seed,
    )  # fmt: skip

    def run(epoch: int, start: int = 0) -> Iterator[Batch]:
        order.set_epoch(epoch)
        for batch in loader.iter_from(start):  # start > 0: a mid-epoch resume skips the batches done
            if skipped is not None and batch.skipped:
                skipped.extend(batch.skipped)
            if len(batch) == 0:
                continue
            yield batch.images, coords[batch.indices]

    return run


def id_batches(
    source: Any, image_ids: Sequence[str], transform: Any, batch_size: int, num_workers: int = 0,
    skipped: list[str] | None = None,
) -> Iterator[tuple[Tensor, list[str]]]:  # fmt: skip
    """Batches ``(images, ids)`` for inference, in input order; undecodable images go to ``skipped``."""
    from torch.utils.data import DataLoader

    from geoens.data import ImageDataset, collate_skip

    ids = [str(i) for i in image_ids]
    ds = ImageDataset(source, ids, None, transform)
    loader = DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_skip
    )
    for batch in loader:
        if skipped is not None:
            skipped.extend(ids[i] for i in batch.skipped)
        if len(batch):
            yield batch.images, [ids[int(i)] for i in batch.indices]


def _tower_transforms(cfg: TowerTrainConfig, train: bool) -> Any:
    from geoens.data import make_transforms
    from geoens.models import backbone_norm

    mean, std = backbone_norm(cfg.backbone)
    return make_transforms(cfg.image_size, train=train, mean=mean, std=std, augment=cfg.augment)


def run_train_tower(
    shards_dir: str | Path,
    labels: str | Path,
    out_model: str | Path,
    cfg: TowerTrainConfig,
    metrics_csv: str | Path | None = None,
    shard_index: str | Path | None = None,
    *,
    checkpoint_every_steps: int = CHECKPOINT_EVERY_STEPS,
    progress_every_s: float = PROGRESS_EVERY_S,
    signals: StopSignals | None = None,
    image_cache: str | Path | None = None,
) -> list[dict[str, float]]:
    """Train the demo image tower on the ``train`` split, early-stop on ``val``, save ``out_model``.

    Resumable: ``checkpoint.pt`` beside ``out_model`` (every epoch, every ``checkpoint_every_steps`` steps
    and after SIGTERM/SIGUSR1 while ``signals`` is active; see :func:`train_tower`).

    Args:
        shards_dir: msgpack shards of the training images.
        labels: Label Parquet folder (``part-*.parquet`` with ``image_id, lat, lon, split``).
        out_model: Where to save the tower (:func:`save_tower`).
        cfg: Hyper-parameters.
        metrics_csv: Optional per-epoch metrics CSV.
        shard_index: Cached shard index (``results/models/shard_index.parquet``; built if missing).
        checkpoint_every_steps: Optimizer steps between mid-epoch checkpoints (0: epoch ends only).
        progress_every_s: Seconds between in-epoch progress lines in the log.
        signals: Active :class:`~geoens.checkpoint.StopSignals` (the workflow script installs them).
        image_cache: Decoded-image cache folder (:mod:`geoens.imagecache`); used when it holds the images.

    Returns:
        The per-epoch metrics.

    Raises:
        TrainingInterrupted: After a stop signal, once the checkpoint is saved.

    """
    from geoens.data import ShardSource
    from geoens.train import load_or_build_index

    source = ShardSource(shards_dir, load_or_build_index(shards_dir, shard_index, write=False))
    train = read_split(labels, "train")
    val = read_split(labels, "val")
    if cfg.max_train_images is not None and len(train) > cfg.max_train_images:
        keep = np.sort(
            np.random.default_rng(cfg.seed).choice(len(train), cfg.max_train_images, replace=False)
        )
        train = train.iloc[keep].reset_index(drop=True)
    log.info("geoclip tower: %d train / %d val images, backbone %s", len(train), len(val), cfg.backbone)
    skipped: list[int] = []
    from geoens.imagecache import load_image_cache

    cache = load_image_cache(image_cache) if image_cache is not None else None
    if cache is not None:
        log.info("geoclip tower: reading the decoded-image cache %s", image_cache)
        train_it = cached_gps_batches(cache, train, cfg, True, skipped)
        val_it = cached_gps_batches(cache, val, cfg, False)
    else:
        train_it = gps_batches(
            source, train, _tower_transforms(cfg, True), cfg.batch_size, True, cfg.seed,
            cfg.num_workers, skipped,
        )  # fmt: skip
        val_it = gps_batches(
            source, val, _tower_transforms(cfg, False), cfg.batch_size, False, cfg.seed,
            cfg.num_workers,
        )  # fmt: skip
    fingerprint = hashlib.sha256(
        json.dumps(
            [{k: v for k, v in asdict(cfg).items() if k not in ("device", "num_workers")},
             train["image_id"].tolist(), val["image_id"].tolist()],
            sort_keys=True,
        ).encode()
    ).hexdigest()  # fmt: skip
    checkpoint = Checkpointer(
        Path(out_model).with_name("checkpoint.pt"),
        version=TOWER_CHECKPOINT_VERSION,
        fingerprint=fingerprint,
        every_steps=checkpoint_every_steps,
        signals=signals,
        label="geoclip tower",
    )
    tower, history = train_tower(
        train_it,
        lambda: val_it(0),
        cfg,
        checkpoint=checkpoint,
        steps_per_epoch=math.ceil(len(train) / cfg.batch_size),
        progress_every_s=progress_every_s,
    )
    if skipped:
        log.warning("geoclip tower: skipped %d undecodable/missing training image reads", len(skipped))
    save_tower(out_model, tower, cfg, history)
    if metrics_csv is not None:
        with atomic_path(metrics_csv) as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False)
    return history


def load_image_tower(
    image_tower: str, model_path: str | Path | None, clip_model: str = DEFAULT_CLIP_MODEL
) -> tuple[nn.Module, float, Any]:
    """``(tower, logit_scale, eval transform)`` for ``geoclip.image_tower`` ``trained`` or ``clip``.

    Raises:
        ClipNotCachedError: For ``clip`` when the CLIP model is not in the local cache.
        GeoClipError: For ``trained`` without a model file, or an unknown tower kind.

    """
    if image_tower == "clip":
        return ClipImageTower(clip_model), load_logit_scale(), clip_transform()
    if image_tower == "trained":
        if model_path is None:
            raise GeoClipError("geoclip.image_tower 'trained' needs the tower model file")
        tower, meta = load_tower(model_path)
        eval_cfg = TowerTrainConfig(backbone=meta["backbone"], image_size=int(meta["config"]["image_size"]))
        return tower, float(meta["logit_scale"]), _tower_transforms(eval_cfg, False)
    raise GeoClipError(f"config key geoclip.image_tower: unknown value {image_tower!r} (trained or clip)")


def run_predict(
    source: Any,
    image_ids: Sequence[str],
    cells: FloatArray,
    tower: nn.Module,
    logit_scale: float,
    transform: Any,
    out: str | Path,
    skipped_json: str | Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int = 0,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Score every image on the fine cells and write ``results/predictions/<dataset>/geoclip.parquet``.

    Batches are streamed to the file (memory does not grow with the number of images). Images that are
    missing or do not decode are left out of the output (and counted), as in :mod:`geoens.train`.

    Args:
        source: Image source (:func:`prediction_inputs`).
        image_ids: Images to score.
        cells: ``(n_cells, 512)`` cell embeddings (:func:`cell_embeddings`).
        tower: Image tower (:func:`load_image_tower`).
        logit_scale: Multiplicative logit scale.
        transform: PIL -> tensor transform of the tower.
        out: Output Parquet.
        skipped_json: Optional JSON summary (same keys as the ``predict`` rule's ``.skipped.json``).
        batch_size: Images per forward pass.
        device: ``auto``, ``cpu`` or ``cuda``.
        num_workers: DataLoader workers.
        show_progress: tqdm progress bar.

    Returns:
        ``{"n_requested", "n_predicted", "n_skipped", "skipped_ids"}``.

    """
    dev = resolve_device(device)
    skipped: list[str] = []
    batches = id_batches(source, image_ids, transform, batch_size, num_workers, skipped)
    chunks: Iterable[tuple[list[str], FloatArray]] = iter_probs(tower, batches, cells, logit_scale, dev)
    if show_progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, total=math.ceil(len(image_ids) / batch_size), desc="geoclip", mininterval=10)
    n = write_predictions(out, chunks, cells.shape[0])
    if skipped:
        log.warning("geoclip predict: %d images missing or undecodable, e.g. %s", len(skipped), skipped[:3])
    summary = {
        "n_requested": len(image_ids),
        "n_predicted": n,
        "n_skipped": len(skipped),
        "skipped_ids": skipped,
    }
    if skipped_json is not None:
        write_json(skipped_json, summary)
    return summary


def prediction_inputs(
    dataset: str, images: str | Path, labels: str | Path, shard_index: str | Path | None = None
) -> tuple[Any, list[str]]:
    """Return the image source and the image ids of a prediction dataset (as the ``predict`` rule does).

    Args:
        dataset: A test-set name, or ``val`` (the training set's validation split).
        images: The test set's image folder, or for ``val`` the training shards folder.
        labels: The test set's label Parquet, or for ``val`` the training label folder (``part-*.parquet``).
        shard_index: For ``val``: the cached shard index (``results/models/shard_index.parquet``).

    Returns:
        ``(source, image ids)``: the same ids, in the same order, as :func:`geoens.train.prediction_dataset`.

    """
    from geoens.train import prediction_dataset

    return prediction_dataset(dataset, labels, images, shard_index)
