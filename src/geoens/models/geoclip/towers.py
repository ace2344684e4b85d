"""GeoCLIP image towers: a small trained timm tower and GeoCLIP's own CLIP ViT-L/14 tower; batch inference."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision import transforms as T  # noqa: N812 (torchvision convention)

from geoens.core.types import F32Array
from geoens.models.geoclip.cells import score_cells
from geoens.models.geoclip.location import EMBED_DIM, GeoClipError, weights_dir
from geoens.models.nets import build_backbone

log = logging.getLogger("geoens.geoclip")

#: Default Hugging Face id of GeoCLIP's image backbone.
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
#: Projection width of CLIP ViT-L/14 image features (input of GeoCLIP's image MLP).
CLIP_FEATURE_DIM = 768
#: CLIP's image normalisation.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Upper bound on the (multiplicative) logit scale, as in CLIP.
MAX_LOGIT_SCALE = 100.0


class ClipNotCachedError(FileNotFoundError):
    """CLIP ViT-L/14 (GeoCLIP's image backbone) is not in the local Hugging Face cache."""


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
        # deferred: huggingface_hub is optional and slow to import; only the CLIP tower needs it
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
        # deferred: huggingface_hub is optional and slow to import; only the CLIP tower needs it
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
    """GeoCLIP's own image tower: frozen CLIP ViT-L/14 image features + the shipped 768->768->512 MLP.

    Raises:
        ClipNotCachedError: When the CLIP model is neither a folder nor in the local cache.
        GeoClipError: When the CLIP model's image projection is not the 768-d the image MLP reads.

    """

    def __init__(
        self,
        model_id: str = DEFAULT_CLIP_MODEL,
        mlp_weights: str | Path | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        local = resolve_clip_model(model_id, cache_dir)
        from transformers import CLIPModel  # deferred: transformers is heavy, only the clip tower needs it

        self.clip = CLIPModel.from_pretrained(str(local), local_files_only=True)
        self.clip.requires_grad_(False)
        width = self.clip.config.projection_dim
        if width != CLIP_FEATURE_DIM:
            raise GeoClipError(
                f"{local}: the CLIP model '{model_id}' (config key geoclip.clip_model) projects images to "
                f"{width}-d features, but GeoCLIP's image MLP reads {CLIP_FEATURE_DIM}-d ones (CLIP "
                f"ViT-L/14, projection_dim {CLIP_FEATURE_DIM}); use {DEFAULT_CLIP_MODEL}"
            )
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
    transform: Callable[[Any], Tensor] = T.Compose(
        [
            T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
    return transform


# --------------------------------------------------------------------------------------------------
# Batch inference
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def embed_images(
    tower: nn.Module, batches: Iterable[tuple[Tensor, Sequence[str]]], device: str | torch.device = "cpu"
) -> Iterator[tuple[list[str], F32Array]]:
    """Yield ``(image_ids, (B, 512) float32 embeddings)`` per batch of ``(images, ids)``."""
    tower = tower.to(device).eval()
    for images, ids in batches:
        emb = tower(images.to(device)).float().cpu().numpy()
        yield list(ids), emb


def iter_probs(
    tower: nn.Module,
    batches: Iterable[tuple[Tensor, Sequence[str]]],
    cells: F32Array,
    logit_scale: float,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[list[str], F32Array]]:
    """Yield ``(image_ids, (B, n_cells) float32)`` cell probabilities per batch.

    The cell embeddings ``cells`` are computed once (:func:`cell_embeddings`) and reused for every batch.
    """
    cells64 = torch.from_numpy(np.array(cells, dtype=np.float64))
    for batch_ids, emb in embed_images(tower, batches, device):
        yield batch_ids, score_cells(emb, cells64, logit_scale)


def predict_probs(
    tower: nn.Module,
    batches: Iterable[tuple[Tensor, Sequence[str]]],
    cells: F32Array,
    logit_scale: float,
    device: str | torch.device = "cpu",
) -> tuple[list[str], F32Array]:
    """Cell probabilities of every image in memory: ``(image_ids, (N, n_cells) float32)``."""
    ids: list[str] = []
    parts: list[F32Array] = []
    for batch_ids, probs in iter_probs(tower, batches, cells, logit_scale, device):
        ids.extend(batch_ids)
        parts.append(probs)
    out = np.concatenate(parts, axis=0) if parts else np.zeros((0, cells.shape[0]), np.float32)
    return ids, out


def iter_top_points(
    tower: nn.Module,
    batches: Iterable[tuple[Tensor, Sequence[str]]],
    gallery_embeddings: F32Array,
    gallery: F32Array,
    logit_scale: float,
    top_k: int,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[list[str], F32Array, F32Array, F32Array]]:
    """Yield ``(image_ids, lat, lon, weight)``, each ``(B, top_k)``: GeoCLIP's top-k gallery points.

    As GeoCLIP's ``predict(image, top_k)``: the softmax over the whole gallery, then its ``top_k`` largest
    entries, best first (the weights are those probabilities; :func:`~geoens.models.training.predictions.
    write_points` renormalises them to sum to 1).

    Args:
        tower: Image tower.
        batches: ``(images, ids)`` batches.
        gallery_embeddings: ``(n, 512)`` location embeddings of the gallery points.
        gallery: ``(n, 2)`` ``(lat, lon)`` degrees of the gallery points.
        logit_scale: Multiplicative logit scale.
        top_k: Points kept per image, ``1 <= top_k <= n``.
        device: Device of the tower.

    Raises:
        ValueError: If ``top_k`` is out of range or the gallery arrays differ in length.

    """
    if gallery.shape[0] != gallery_embeddings.shape[0] or not 1 <= top_k <= gallery.shape[0]:
        raise ValueError(
            f"top_k must be in 1..{gallery.shape[0]} (gallery of {gallery.shape[0]} points, "
            f"{gallery_embeddings.shape[0]} embeddings), got {top_k}"
        )
    for batch_ids, probs in iter_probs(tower, batches, gallery_embeddings, logit_scale, device):
        top = torch.topk(torch.from_numpy(probs), top_k, dim=1)
        idx = top.indices.numpy()
        yield batch_ids, gallery[idx, 0], gallery[idx, 1], top.values.numpy()
