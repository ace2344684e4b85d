"""The real model paths, end to end on tiny randomly initialised models (no download, no pretrained weights).

* GeoCLIP's ``clip`` image tower: a tiny CLIP saved to a folder (``geoclip.clip_model`` accepts one) + the
  wheel's shipped image MLP + its location encoder, through geoens's prediction stage; checked against the
  ``geoclip`` package's own ``GeoCLIP`` built on the same folder.
* The BiT-M R50x1 architecture of timm (the paper's backbone) doing one training step and a 224 px
  prediction through geoens's training loop and predictor.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fakes import colour_jpeg, noise_jpeg, write_partition_csv
from geoens.models.datasets import FolderSource
from geoens.models.geoclip.cells import cell_embeddings, fixed_size_list_to_numpy
from geoens.models.geoclip.location import GeoClipError, embed_locations, load_gps_gallery
from geoens.models.geoclip.stage import load_image_tower, run_predict, run_predict_points
from geoens.models.geoclip.towers import CLIP_FEATURE_DIM

#: Fine cells of the tiny partition (lat, lon of each cell's mean location).
CELLS = [(48.86, 2.35), (-33.87, 151.21), (40.71, -74.01), (-1.29, 36.82), (35.68, 139.69)]
#: Gallery points used for the top-k form (the first of GeoCLIP's 100K; all of them is slow on CPU).
N_GALLERY = 2000
TOP_K = 5


def _save_tiny_clip(folder: Path, projection_dim: int = CLIP_FEATURE_DIM) -> Path:
    """Save a seeded random CLIP (2 vision layers of width 32) projecting to ``projection_dim``."""
    pytest.importorskip("transformers", reason="the CLIP tower needs transformers (geoens[torch] extra)")
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        projection_dim=projection_dim,
        text_config=dict(
            hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, vocab_size=99,
            max_position_embeddings=16, bos_token_id=0, eos_token_id=2,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=224,
            patch_size=32,
        ),
    )  # fmt: skip
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)  # GeoCLIP's ImageEncoder loads a processor from the folder
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP projecting to the 768-d the wheel's image MLP reads."""
    return _save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def _images(folder: Path) -> list[str]:
    """Photos of several sizes and aspect ratios (CLIP resizes and centre-crops them) and one broken file."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    files = {
        "red.jpg": colour_jpeg((200, 40, 40), rng, (300, 260)),
        "green.jpg": colour_jpeg((40, 200, 40), rng, (224, 224)),
        "sub/noise.jpg": noise_jpeg(2, (256, 400)),
        "broken.jpg": b"not a jpeg",
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return list(files)


def test_geoclip_clip_tower_predicts_cells_and_gallery_points(
    tiny_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip(
        "geoclip", reason="GeoCLIP's weights come with the geoclip wheel (geoens[torch] extra)"
    )
    torch.set_num_threads(2)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = [f"{k},47a{k:x}1,{10 + k},{lat},{lon}" for k, (lat, lon) in enumerate(CELLS)]
    part = write_partition_csv(tmp_path / "fine.csv", rows, num_images=60)
    ids = _images(tmp_path / "images")
    source = FolderSource(tmp_path / "images")

    tower, scale, transform = load_image_tower("clip", None, str(tiny_clip))
    cells = cell_embeddings(part, tmp_path / "cells.parquet")
    out = tmp_path / "predictions" / "test" / "geoclip.parquet"
    counts = run_predict(source, ids, cells, tower, scale, transform, out, batch_size=2, device="cpu")
    assert counts["n_predicted"] == 3 and counts["skipped_ids"] == ["broken.jpg"]

    table = pq.read_table(out)
    assert table["image_id"].to_pylist() == ["red.jpg", "green.jpg", "sub/noise.jpg"]
    assert table.schema.field("probs").type == pa.list_(pa.float32(), len(CELLS))
    probs = fixed_size_list_to_numpy(table["probs"])
    assert np.isfinite(probs).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(table["top_class"].to_numpy(), probs.argmax(axis=1))

    # The geoclip package's own model on the same CLIP folder, the same wheel weights and the same cells.
    from geoclip.model.GeoCLIP import GeoCLIP
    from PIL import Image

    ref = GeoCLIP(from_pretrained=True, clip_path=str(tiny_clip)).eval()
    with torch.no_grad():
        pixels = []
        for image_id in ids[:3]:
            with Image.open(source.folder / image_id) as image:
                pixels.append(ref.image_encoder.preprocess_image(image.convert("RGB")))
        ref_probs = ref(torch.cat(pixels), torch.tensor(CELLS, dtype=torch.float32)).softmax(dim=1).numpy()
    np.testing.assert_allclose(probs, ref_probs, atol=1e-3)  # resize: torchvision vs CLIPImageProcessor

    # The gallery form: each image's top-k gallery points, as geoclip's predict(image, top_k) returns them.
    gallery = load_gps_gallery()[:N_GALLERY]
    points_out = tmp_path / "predictions" / "test" / "geoclip.points.parquet"
    counts = run_predict_points(
        source, ids, gallery, embed_locations(gallery[:, 0], gallery[:, 1]), tower, scale, transform,
        points_out, TOP_K, batch_size=2, device="cpu",
    )  # fmt: skip
    assert counts["n_predicted"] == 3
    points = pd.read_parquet(points_out)
    assert list(points.columns) == ["image_id", "lat", "lon", "weight"]
    assert points["image_id"].tolist() == ["red.jpg", "green.jpg", "sub/noise.jpg"]
    ref.gps_gallery = torch.from_numpy(gallery)
    for row in points.itertuples():
        assert len(row.lat) == len(row.lon) == len(row.weight) == TOP_K
        assert np.all(np.diff(row.weight) <= 0) and row.weight.sum() == pytest.approx(1.0, abs=1e-12)
        ref_gps, ref_p = ref.predict(str(source.folder / row.image_id), TOP_K)
        np.testing.assert_allclose(np.stack([row.lat, row.lon], axis=1), ref_gps.numpy(), atol=1e-5)
        np.testing.assert_allclose(row.weight, (ref_p / ref_p.sum()).numpy(), atol=1e-3)


def test_clip_model_of_another_width_is_named(tmp_path: Path) -> None:
    pytest.importorskip(
        "geoclip", reason="GeoCLIP's weights come with the geoclip wheel (geoens[torch] extra)"
    )
    folder = _save_tiny_clip(tmp_path / "clip-b32", projection_dim=512)  # CLIP ViT-B/32's width
    with pytest.raises(
        GeoClipError, match=r"clip-b32: the CLIP model .* projects images to 512-d features, but"
    ):
        load_image_tower("clip", None, str(folder))


def test_points_file_normalises_weights_and_rejects_bad_ones(tmp_path: Path) -> None:
    from geoens.models.training.predictions import write_points

    lat, lon = np.array([[10.0, 20.0], [30.0, 40.0]]), np.array([[1.0, 2.0], [3.0, 4.0]])
    path = tmp_path / "points.parquet"
    assert write_points(path, [(["a", "b"], lat, lon, np.array([[3.0, 1.0], [0.5, 0.5]]))]) == 2
    back = pd.read_parquet(path)
    assert [w.tolist() for w in back["weight"]] == [[0.75, 0.25], [0.5, 0.5]]
    assert [v.tolist() for v in back["lat"]] == [[10.0, 20.0], [30.0, 40.0]]
    for bad in ([[1.0, -0.5], [1.0, 1.0]], [[1.0, 1.0], [np.nan, 1.0]], [[1.0, 1.0], [0.0, 0.0]]):
        with pytest.raises(ValueError, match=r"image '[ab]': weights must be finite, >= 0 and not all 0"):
            write_points(tmp_path / "bad.parquet", [(["a", "b"], lat, lon, np.array(bad))])
        assert not (tmp_path / "bad.parquet").exists()  # nothing half-written
    with pytest.raises(ValueError, match=r"2 image ids but points of shapes"):
        write_points(tmp_path / "bad.parquet", [(["a", "b"], lat, lon[:1], np.ones((2, 2)))])


#: The paper's backbone (BiT-M R50x1 of the ImageNet-21k tag), built without its pretrained weights.
BIT = "resnetv2_50x1_bit.goog_in21k"


def test_bit_r50x1_trains_one_step_and_predicts_at_224(tmp_path: Path) -> None:
    pytest.importorskip("timm", reason="the timm backbones need timm (geoens[torch] extra)")
    from geoens.models.nets import build_model
    from geoens.models.predictors import predict_to_parquet, train_model
    from geoens.models.training.runtime import seed_everything
    from test_train import COLOURS, make_world

    paths = make_world(tmp_path, n=3, n_val=1)  # two training images: one batch of 2, one optimizer step
    trainer = {"backbone": BIT, "image_size": 224, "batch_size": 2, "epochs": 1, "lr": 0.001, "patience": 1}
    out = tmp_path / "models" / "geoest"
    summary = train_model(
        "geoest", paths["labels"], paths["shards"], out, trainer, partitions_dir=paths["partitions"],
        num_workers=0, seed=3, threads=2, device="cpu",
    )  # fmt: skip
    assert (summary["n_train"], summary["n_val"], summary["epochs"]) == (2, 1, 1)

    # The same seed builds the same initial network; one AdamW step moves every weight by about lr at most
    # (|m / sqrt(v)| <= 1 on the first step, plus the decay lr * wd * w), and moves most of them.
    seed_everything(3)
    init = build_model("geoest", BIT, n_cells=[2, 3, 4]).state_dict()
    saved = torch.load(out / "model.pt", weights_only=False)
    trained, meta = saved["state_dict"], saved["meta"]
    assert (meta["backbone"], meta["image_size"]) == (BIT, 224)
    assert meta["mean"] == meta["std"] == [0.5, 0.5, 0.5]  # BiT's input normalisation, not ImageNet's
    assert init.keys() == trained.keys()
    moved = total = 0
    for key, before in init.items():
        step = (trained[key] - before).abs()
        assert float(step.max()) <= 0.001 * (1 + 1e-4 * float(before.abs().max())) + 1e-6, key
        moved += int((step > 0).sum())
        total += step.numel()
    assert moved > 0.9 * total, (moved, total)

    folder = tmp_path / "testset"
    folder.mkdir()
    for k, (size, cls) in enumerate([(300, 1), (180, 2)]):  # resized and centre-cropped to 224
        (folder / f"t{k}.jpg").write_bytes(colour_jpeg(COLOURS[cls], np.random.default_rng(k), (size, size)))
    ids = ["t0.jpg", "missing.jpg", "t1.jpg"]
    pred = tmp_path / "predictions" / "test" / "geoest.parquet"
    counts = predict_to_parquet(out / "model.pt", FolderSource(folder), ids, pred, batch_size=4, device="cpu")
    assert counts["skipped_ids"] == ["missing.jpg"]
    table = pq.read_table(pred)
    assert table["image_id"].to_pylist() == ["t0.jpg", "t1.jpg"]
    assert table.schema.field("probs").type == pa.list_(pa.float32(), 4)  # the four fine cells
    probs = fixed_size_list_to_numpy(table["probs"])
    assert np.isfinite(probs).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1, dtype=np.float64), 1.0, atol=1e-5)
    np.testing.assert_array_equal(table["top_class"].to_numpy(), probs.argmax(axis=1))
