"""Networks: a timm backbone with one classification head per target.

* ``ls`` (4 LandScan buckets) and ``lc`` (7 land-cover classes): one head each.
* ``geoest``: GeoEstimation's base(M, f*): one backbone, three heads over the coarse/middle/fine S2
  partitions, trained with the sum of the three cross-entropies; at inference :func:`hierarchical_combine`
  turns the three softmaxes into fine-cell probabilities.

Pretrained weights are only ever read from the local Hugging Face cache or a local file: the process is put in
offline mode (``HF_HUB_OFFLINE=1``) unless the user allowed downloads (``GEOENS_ALLOW_DOWNLOAD=1``), and a
missing cache entry raises :class:`PretrainedWeightsMissingError` at once instead of hanging on the network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geoens.core.constants import N_CLASSES
from geoens.models.datasets import IMAGENET_MEAN, IMAGENET_STD

#: Environment variable that allows timm / Hugging Face downloads (anything but "" / "0").
ALLOW_DOWNLOAD_ENV = "GEOENS_ALLOW_DOWNLOAD"
#: Head names of the geoest model, coarsest first.
GEOEST_HEADS: tuple[str, ...] = ("coarse", "middle", "fine")


class PretrainedWeightsMissingError(FileNotFoundError):
    """Pretrained weights were requested but are not in the local cache (and downloads are not allowed)."""


def downloads_allowed() -> bool:
    """Whether the user allowed network downloads of weights (``GEOENS_ALLOW_DOWNLOAD=1``)."""
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "0") not in ("", "0", "false", "False")


def _ensure_offline() -> None:
    """Put Hugging Face Hub in offline mode for this process unless downloads are allowed."""
    if downloads_allowed():
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:  # huggingface_hub reads the variable at import time; patch the constant if already imported
        import huggingface_hub.constants as hf_constants  # deferred: only patched when timm needs it

        hf_constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        pass


def _cached_weights(name: str) -> tuple[str, str | None]:
    """Return ``(hf_hub_id, local file or None)`` for a timm model's default pretrained weights."""
    import timm  # deferred: timm is heavy (and reads the offline setting at import)
    from huggingface_hub import try_to_load_from_cache  # deferred: comes with timm, only for pretrained

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise PretrainedWeightsMissingError(f"timm has no pretrained weights registered for '{name}'")
    hub_id = str(cfg.hf_hub_id or "")
    if not hub_id:
        return str(cfg.url or name), None
    hub_id = hub_id.split("@")[0]
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return hub_id, found
    return hub_id, None


def build_backbone(
    name: str,
    pretrained: bool = False,
    num_classes: int = 0,
    pretrained_file: str | Path | None = None,
) -> tuple[nn.Module, int]:
    """Build a timm backbone returning pooled features (``num_classes=0``) and its feature width.

    Args:
        name: timm model name, e.g. ``resnet18`` (demo) or ``resnetv2_50x1_bit.goog_in21k`` (paper: BiT-M
            R50x1, ImageNet-21k).
        pretrained: Load pretrained weights, from ``pretrained_file`` if given, else from the local Hugging
            Face cache (never the network unless ``GEOENS_ALLOW_DOWNLOAD=1``).
        num_classes: timm classifier width; 0 = no classifier (pooled features).
        pretrained_file: Local weights file (``.safetensors``/``.bin``/``.pth``) for ``pretrained``.

    Returns:
        ``(module, feature_dim)``: ``module(x)`` gives ``(b, num_classes or feature_dim)``.

    Raises:
        PretrainedWeightsMissingError: If ``pretrained`` and the weights are not available locally; the
            message names the model and what to download.
        ValueError: If timm does not know ``name``.

    """
    import timm  # deferred: timm is heavy (and reads the offline setting at import)

    _ensure_offline()
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"unknown timm backbone '{name}'")
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if pretrained:
        if pretrained_file is not None:
            path = Path(pretrained_file)
            if not path.is_file():
                raise PretrainedWeightsMissingError(
                    f"pretrained_file {path} for backbone '{name}' does not exist; download the weights of "
                    f"'{name}' (e.g. huggingface.co/timm/{name}) to that path"
                )
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        elif not downloads_allowed():
            hub_id, local = _cached_weights(name)
            if local is None:
                raise PretrainedWeightsMissingError(
                    f"pretrained weights for backbone '{name}' are not in the local Hugging Face cache "
                    f"(HF_HUB_OFFLINE=1). Download them on a machine with internet, e.g. "
                    f"`hf download {hub_id}` (then copy ~/.cache/huggingface), or set "
                    f"train.models.<model>.pretrained_file to a local weights file, or set "
                    f"{ALLOW_DOWNLOAD_ENV}=1 to allow downloads"
                )
            kwargs["pretrained_cfg_overlay"] = {"file": local}
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    # Some timm models (LCNet, MobileNetV3, EfficientNet-lite heads) add a conv head after pooling, so their
    # pooled output is ``head_hidden_size`` wide rather than ``num_features``.
    feature_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)  # type: ignore[arg-type]
    return model, feature_dim


def backbone_norm(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input normalisation (mean, std) of a timm model's pretrained config (ImageNet's if unknown)."""
    import timm  # deferred: timm is heavy (and reads the offline setting at import)

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(cfg.mean), tuple(cfg.std)


class MultiHeadNet(nn.Module):
    """A backbone with one linear head per target; ``forward`` returns ``{head: logits}``.

    Args:
        backbone: Feature extractor, ``(b, 3, h, w) -> (b, feature_dim)``.
        feature_dim: Width of the features.
        heads: Head name -> number of classes, in output order.

    """

    def __init__(self, backbone: nn.Module, feature_dim: int, heads: Mapping[str, int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head_names = list(heads)
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, int(n)) for name, n in heads.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head."""
        features = self.backbone(x)
        return {name: self.heads[name](features) for name in self.head_names}


def head_spec(model: str, n_cells: Sequence[int] | None = None) -> dict[str, int]:
    """Head name -> class count for a predictor: ``ls`` (4), ``lc`` (7), ``geoest`` (coarse, middle, fine).

    Raises:
        ValueError: For an unknown model or ``geoest`` without three cell counts.

    """
    if model in N_CLASSES:
        return {model: N_CLASSES[model]}
    if model == "geoest":
        if n_cells is None or len(n_cells) != 3:
            raise ValueError("geoest needs the number of coarse, middle and fine cells")
        return dict(zip(GEOEST_HEADS, (int(n) for n in n_cells), strict=True))
    raise ValueError(f"unknown predictor '{model}' (expected ls, lc or geoest)")


def build_model(
    model: str,
    backbone: str,
    pretrained: bool = False,
    pretrained_file: str | Path | None = None,
    n_cells: Sequence[int] | None = None,
) -> MultiHeadNet:
    """Build the network of predictor ``model`` (``ls``, ``lc`` or ``geoest``) on a timm ``backbone``."""
    heads = head_spec(model, n_cells)
    net, dim = build_backbone(backbone, pretrained=pretrained, num_classes=0, pretrained_file=pretrained_file)
    return MultiHeadNet(net, dim, heads)


def hierarchical_combine(
    p_coarse: np.ndarray | torch.Tensor,
    p_middle: np.ndarray | torch.Tensor,
    p_fine: np.ndarray | torch.Tensor,
    hierarchy: Any,
) -> np.ndarray:
    """GeoEstimation's hierarchical fine-cell probabilities (base(M, f*)).

    ``p(c) = p_fine(c) * p_middle(parent_m(c)) * p_coarse(parent_c(c))``, renormalised per image (float64).
    A fine cell without a parent at a level (``-1``) gets the factor 1 at that level. If every product of an
    image underflows to 0, its ``p_fine`` is returned unchanged.

    Args:
        p_coarse: ``(b, n_coarse)`` or ``(n_coarse,)`` probabilities.
        p_middle: ``(b, n_middle)`` probabilities.
        p_fine: ``(b, n_fine)`` probabilities.
        hierarchy: ``middle`` and ``coarse`` parent of every fine cell, in fine-cell order: a DataFrame /
            mapping with those columns, or an ``(n_fine, 2)`` array of ``(middle, coarse)``.

    Returns:
        ``(b, n_fine)`` (or ``(n_fine,)``) float64 probabilities summing to 1.

    Raises:
        ValueError: If the hierarchy length or parent labels do not fit the probability widths.

    """
    pc, pm, pf = (
        np.asarray(p.detach().cpu() if isinstance(p, torch.Tensor) else p, np.float64)
        for p in (p_coarse, p_middle, p_fine)
    )
    single = pf.ndim == 1
    pc, pm, pf = (np.atleast_2d(p) for p in (pc, pm, pf))
    if isinstance(hierarchy, np.ndarray):
        middle, coarse = hierarchy[:, 0].astype(np.int64), hierarchy[:, 1].astype(np.int64)
    else:
        middle = np.asarray(hierarchy["middle"], np.int64)
        coarse = np.asarray(hierarchy["coarse"], np.int64)
    n_fine = pf.shape[1]
    if len(middle) != n_fine:
        raise ValueError(f"hierarchy has {len(middle)} fine cells, probabilities have {n_fine}")
    for name, parent, width in (("middle", middle, pm.shape[1]), ("coarse", coarse, pc.shape[1])):
        if parent.size and (parent.max() >= width or parent.min() < -1):
            raise ValueError(f"hierarchy '{name}' labels outside [-1, {width - 1}]")
    fm = np.where(middle >= 0, pm[:, np.maximum(middle, 0)], 1.0)
    fc = np.where(coarse >= 0, pc[:, np.maximum(coarse, 0)], 1.0)
    p = pf * fm * fc
    total = p.sum(axis=1, keepdims=True)
    bad = ~(total[:, 0] > 0)
    if bad.any():
        p[bad] = pf[bad]
        total[bad] = pf[bad].sum(axis=1, keepdims=True)
    p /= total
    return p[0] if single else p
