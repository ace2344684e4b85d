"""GeoCLIP adapter: shipped weights, cell-embedding cache, scoring, tower training, CLIP cache error."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from fakes import colour_jpeg, round_robin, write_label_parts, write_msgpack_shards, write_partition_csv
from geoens.models.geoclip.cells import (
    cell_embeddings,
    fixed_size_list_to_numpy,
    read_cell_partition,
    score_cells,
)
from geoens.models.geoclip.location import (
    EMBED_DIM,
    GeoClipError,
    LocationEncoder,
    embed_locations,
    load_gps_gallery,
    load_location_encoder,
    load_logit_scale,
    weights_dir,
)
from geoens.models.geoclip.stage import (
    gps_batches,
    load_image_tower,
    prediction_inputs,
    read_split,
    run_predict,
    run_train_tower,
    tower_transforms,
)
from geoens.models.geoclip.towers import (
    DEFAULT_CLIP_MODEL,
    ClipImageTower,
    ClipNotCachedError,
    TrainedImageTower,
)
from geoens.models.geoclip.training import GpsQueue, TowerTrainConfig, evaluate_loss, load_tower, train_tower

PLACES = {  # (lat, lon)
    "paris": (48.8566, 2.3522),
    "lyon": (45.7640, 4.8357),
    "sydney": (-33.8688, 151.2093),
    "nairobi": (-1.2921, 36.8219),
    "anchorage": (61.2181, -149.9003),
    "antimeridian": (-17.0, 179.99),
}


@pytest.fixture(scope="module")
def encoder() -> LocationEncoder:
    return load_location_encoder()


def _latlon() -> torch.Tensor:
    return torch.tensor(list(PLACES.values()), dtype=torch.float32)


def test_location_encoder_matches_geoclip_code_path(encoder: LocationEncoder) -> None:
    pytest.importorskip("transformers")  # geoclip's package import pulls it in
    from geoclip.model.location_encoder import LocationEncoder as GeoClipLocationEncoder

    ref = GeoClipLocationEncoder(from_pretrained=True).eval()  # GeoCLIP's own class, its shipped weights
    pts = _latlon()
    with torch.no_grad():
        want = ref(pts)
    got = embed_locations(pts[:, 0].numpy(), pts[:, 1].numpy(), encoder, batch_size=4, normalize=False)
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-6)
    assert np.abs(got).max() > 1e-3  # real weights, not zeros

    # Location logits: GeoCLIP.forward computes exp(logit_scale) * norm(img) @ norm(loc).T and softmaxes.
    stored = torch.load(weights_dir() / "logit_scale_weights.pth", weights_only=True)
    img = torch.randn(3, EMBED_DIM, generator=torch.Generator().manual_seed(0))
    logits = stored.exp() * (F.normalize(img, dim=1) @ F.normalize(want, dim=1).T)
    probs = score_cells(img.numpy(), got, load_logit_scale())
    np.testing.assert_allclose(probs, logits.softmax(dim=1).numpy(), atol=1e-6)
    assert load_logit_scale() == pytest.approx(float(stored.exp()))
    assert 30 < load_logit_scale() < 50


def test_nearby_locations_are_more_similar(encoder: LocationEncoder) -> None:
    names = list(PLACES)
    emb = embed_locations(*_latlon().numpy().T, encoder)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    cos = emb @ emb.T
    paris, lyon, sydney = names.index("paris"), names.index("lyon"), names.index("sydney")
    assert cos[paris, lyon] > cos[paris, sydney] + 0.1
    assert cos[lyon, paris] > cos[lyon, sydney] + 0.1
    # Scoring Paris's own embedding as an image ranks Paris first, then Lyon, with Sydney far down.
    probs = score_cells(emb[[paris]], emb, load_logit_scale())[0]
    order = list(np.argsort(-probs))
    assert order[:2] == [paris, lyon]
    assert probs[lyon] > 10 * probs[sydney]


def _write_partition(path: Path, coords: list[tuple[float, float]], header: bool = True) -> Path:
    # written out of class order on purpose: the cache must come back in class_label order
    rows = [f"{k},47a{k:x}1,{10 + k},{coords[k][0]},{coords[k][1]}" for k in reversed(range(len(coords)))]
    return write_partition_csv(path, rows, num_images=100, header=header)


class CountingEncoder(LocationEncoder):
    """The real encoder, counting the points it embeds."""

    def __init__(self, base: LocationEncoder) -> None:
        super().__init__(base.sigmas)
        self.load_state_dict(base.state_dict())
        self.requires_grad_(False)
        self.eval()
        self.points = 0

    def forward(self, latlon: torch.Tensor) -> torch.Tensor:
        self.points += int(latlon.shape[0])
        return super().forward(latlon)


def test_cell_embeddings_cached_once_per_partition(tmp_path: Path, encoder: LocationEncoder) -> None:
    coords = list(PLACES.values())
    part = _write_partition(tmp_path / "fine.csv", coords)
    cache = tmp_path / "geoclip" / "cell_embeddings.parquet"
    counting = CountingEncoder(encoder)

    first = cell_embeddings(part, cache, encoder=counting, batch_size=4)
    assert counting.points == len(coords)
    assert cache.exists()
    want = embed_locations(*np.array(coords).T, encoder)
    np.testing.assert_allclose(first, want, atol=1e-6)  # class_label order, normalised

    # Many images scored in several batches: the cells are never re-embedded.
    for _ in range(3):
        again = cell_embeddings(part, cache, encoder=counting)
        score_cells(np.random.default_rng(0).normal(size=(5, EMBED_DIM)), again, 40.0)
    assert counting.points == len(coords)
    np.testing.assert_array_equal(again, first)

    table = pq.read_table(cache)
    assert table.column_names == ["class_label", "hex_id", "latitude_mean", "longitude_mean", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), EMBED_DIM)
    assert table["class_label"].to_pylist() == list(range(len(coords)))

    # Another partition (one cell moved) invalidates the cache.
    coords2 = [*coords[:-1], (10.0, 10.0)]
    _write_partition(part, coords2)
    third = cell_embeddings(part, cache, encoder=counting)
    assert counting.points == 2 * len(coords)
    np.testing.assert_allclose(third[-1], embed_locations([10.0], [10.0], encoder)[0], atol=1e-6)


def test_bad_partition_names_file_and_row(tmp_path: Path) -> None:
    bad = _write_partition(tmp_path / "nohdr.csv", [(1.0, 2.0), (3.0, 4.0)], header=False)
    with pytest.raises(GeoClipError, match=r"nohdr\.csv: cannot read partition CSV: .*missing column"):
        read_cell_partition(bad)
    out = _write_partition(tmp_path / "range.csv", [(1.0, 2.0), (95.0, 4.0)])
    with pytest.raises(GeoClipError, match=r"range\.csv: bad latitude_mean 95\.0 of class_label 1"):
        read_cell_partition(out)
    with pytest.raises(GeoClipError, match="invalid coordinate at index 1"):
        embed_locations([0.0, np.nan], [0.0, 0.0])


def test_probabilities_sum_to_one_and_follow_cosine() -> None:
    rng = np.random.default_rng(1)
    img = rng.normal(size=(7, EMBED_DIM)).astype(np.float32) * 3.0  # any norm
    cells = rng.normal(size=(300, EMBED_DIM)).astype(np.float32)
    probs = score_cells(img, cells, 39.7)
    assert probs.dtype == np.float32 and probs.shape == (7, 300)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs > 0).all()
    cos = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (
        cells / np.linalg.norm(cells, axis=1, keepdims=True)
    ).T
    np.testing.assert_array_equal(probs.argmax(axis=1), cos.argmax(axis=1))
    flat = score_cells(img, cells, 1e-9)  # no temperature: uniform
    np.testing.assert_allclose(flat, 1 / 300, rtol=1e-6)
    with pytest.raises(GeoClipError, match="logit_scale"):
        score_cells(img, cells, -1.0)
    with pytest.raises(GeoClipError, match="shapes"):
        score_cells(img, cells[:, :10], 1.0)


def test_gps_queue_matches_geoclip_fifo() -> None:
    q = GpsQueue(5, torch.zeros(5, 2))
    q.push(torch.ones(3, 2))
    q.push(2 * torch.ones(3, 2))  # wraps around: slots 3,4 then 0
    assert q.get()[:, 0].tolist() == [2, 1, 1, 2, 2]
    assert q.ptr == 1
    q.push(torch.arange(14, dtype=torch.float32).reshape(7, 2))  # larger than the queue: last 5 kept
    assert q.get()[:, 0].tolist() == [4, 6, 8, 10, 12]


# --- a tiny generated world: images whose colour depends on where they were taken ---------------------

REGIONS = [(48.0, 2.0, (200, 40, 40)), (-33.0, 150.0, (40, 200, 40)), (40.0, -100.0, (40, 40, 200))]


def _jpeg(color: tuple[int, int, int], rng: np.random.Generator, size: int = 32) -> bytes:
    return colour_jpeg(color, rng, (size, size))


def _tiny_world(root: Path, n_per_region: int = 8) -> tuple[Path, Path, Path, pd.DataFrame]:
    rng = np.random.default_rng(0)
    rows, records = [], []
    for r, (lat, lon, color) in enumerate(REGIONS):
        for k in range(n_per_region):
            image_id = f"r{r}_{k:02d}.jpg"
            records.append({"id": image_id, "image": _jpeg(color, rng)})
            split = "val" if k % 4 == 0 else "train"
            rows.append((image_id, lat + rng.normal(0, 1), lon + rng.normal(0, 1), split))
    records.append({"id": "broken.jpg", "image": b"not a jpeg"})
    rows.append(("broken.jpg", 0.0, 0.0, "val"))
    shards = root / "shards"
    write_msgpack_shards(shards, round_robin(records, 2))
    labels = pd.DataFrame(rows, columns=["image_id", "lat", "lon", "split"])
    label_dir = write_label_parts(root / "labels", labels)
    part = _write_partition(root / "fine.csv", [(lat, lon) for lat, lon, _ in REGIONS])
    return shards, label_dir, part, labels


def _tower_cfg(**kw: object) -> TowerTrainConfig:
    base = dict(
        backbone="resnet18", image_size=32, epochs=3, batch_size=6, lr=0.003, patience=10,
        queue_size=16, gallery_negatives=64, seed=0, device="cpu", num_workers=0,
    )  # fmt: skip
    base.update(kw)
    return TowerTrainConfig(**base)  # type: ignore[arg-type]


def test_tower_negatives_are_a_seeded_gallery_sample(encoder: LocationEncoder) -> None:
    from geoens.models.geoclip.training import tower_negatives

    gallery = load_gps_gallery()[:200]
    cfg = _tower_cfg(queue_size=8, gallery_negatives=16)
    a_emb, a_queue = tower_negatives(cfg, encoder, gallery, torch.device("cpu"))
    b_emb, b_queue = tower_negatives(cfg, encoder, gallery, torch.device("cpu"))
    assert a_emb.shape == (16, EMBED_DIM) and a_queue.get().shape == (8, EMBED_DIM)
    assert torch.equal(a_emb, b_emb) and torch.equal(a_queue.get(), b_queue.get())


def test_tiny_tower_training_lowers_contrastive_loss(tmp_path: Path, encoder: LocationEncoder) -> None:
    torch.set_num_threads(2)
    from geoens.models.datasets import ShardSource

    shards, label_dir, _, labels = _tiny_world(tmp_path)
    train = read_split(label_dir, "train")
    source = ShardSource(shards)
    cfg = _tower_cfg()
    eval_tf = tower_transforms(cfg, train=False)
    batches = gps_batches(source, train, eval_tf, cfg.batch_size, shuffle=True, seed=0)
    fixed = gps_batches(source, train, eval_tf, cfg.batch_size, shuffle=False, seed=0)
    gallery = load_gps_gallery()
    negatives = encoder(torch.from_numpy(gallery[:64]))

    torch.manual_seed(cfg.seed)
    untrained = TrainedImageTower(cfg.backbone, init_logit_scale=load_logit_scale())
    before = evaluate_loss(untrained, fixed(0), encoder, negatives, torch.device("cpu"))
    tower, history = train_tower(batches, lambda: fixed(0), cfg, encoder=encoder, gallery=gallery)
    after = evaluate_loss(tower, fixed(0), encoder, negatives, torch.device("cpu"))
    assert len(history) == cfg.epochs
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert after < before - 0.3, (before, after, history)
    # encoder stayed frozen (the location space is GeoCLIP's)
    np.testing.assert_array_equal(
        encoder.state_dict()["LocEnc0.head.0.weight"].numpy(),
        load_location_encoder().state_dict()["LocEnc0.head.0.weight"].numpy(),
    )


def test_train_save_predict_end_to_end(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    shards, label_dir, part, labels = _tiny_world(tmp_path)
    model = tmp_path / "models" / "geoclip_tower" / "model.pt"
    metrics = tmp_path / "models" / "geoclip_tower" / "metrics.csv"
    cfg = _tower_cfg(epochs=2)
    history = run_train_tower(shards, label_dir, model, cfg, metrics)
    assert model.exists() and len(pd.read_csv(metrics)) == len(history)

    cells = cell_embeddings(part, tmp_path / "cells.parquet")
    tower, scale, tf = load_image_tower("trained", model)
    source, ids = prediction_inputs("val", shards, label_dir)
    out = tmp_path / "predictions" / "val" / "geoclip.parquet"
    skipped = tmp_path / "predictions" / "val" / "geoclip.skipped.json"
    counts = run_predict(source, ids, cells, tower, scale, tf, out, skipped, batch_size=4, device="cpu")
    want = {
        "n_requested": len(ids),
        "n_predicted": len(ids) - 1,
        "n_skipped": 1,
        "skipped_ids": ["broken.jpg"],
    }
    assert counts == want  # broken.jpg is skipped and counted
    assert json.loads(skipped.read_text()) == want

    table = pq.read_table(out)
    assert table.schema.field("image_id").type == pa.string()
    assert table.schema.field("probs").type == pa.list_(pa.float32(), len(REGIONS))
    assert table.schema.field("top_class").type == pa.int32()
    probs = fixed_size_list_to_numpy(table["probs"])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(table["top_class"].to_numpy(), probs.argmax(axis=1))
    assert table["image_id"].to_pylist() == [i for i in ids if i != "broken.jpg"]

    # deterministic: the same model and inputs give the same bytes
    out2 = tmp_path / "again.parquet"
    run_predict(source, ids, cells, tower, scale, tf, out2, batch_size=4, device="cpu")
    assert out.read_bytes() == out2.read_bytes()

    with pytest.raises(GeoClipError, match="not a GeoCLIP image tower"):
        torch.save({"kind": "other"}, tmp_path / "x.pt")
        load_tower(tmp_path / "x.pt")


def test_tower_resumes_mid_epoch_after_stop_signal(tmp_path: Path, encoder: LocationEncoder) -> None:
    """SIGUSR1 in the middle of epoch 1 checkpoints and stops; resuming ends bitwise where a full run does."""
    import signal

    from geoens.models.checkpoint import Checkpointer, StopSignals, TrainingInterrupted
    from geoens.models.datasets import ShardSource

    torch.set_num_threads(2)
    shards, label_dir, _, _ = _tiny_world(tmp_path)
    source = ShardSource(shards)
    cfg = _tower_cfg(epochs=2, batch_size=4)  # 18 training images: 5 steps per epoch
    train, val = read_split(label_dir, "train"), read_split(label_dir, "val")
    batches = gps_batches(source, train, tower_transforms(cfg, True), 4, True, cfg.seed)
    val_batches = gps_batches(source, val, tower_transforms(cfg, False), 4, False, cfg.seed)
    gallery = load_gps_gallery()

    def run(name: str, signals: StopSignals | None = None, **kw: object) -> tuple[torch.nn.Module, list]:
        ckpt = Checkpointer(tmp_path / name / "checkpoint.pt", version=1, fingerprint="f", signals=signals)
        return train_tower(batches, lambda: val_batches(0), cfg, encoder, gallery, checkpoint=ckpt, **kw)

    full, full_history = run("full")

    def signal_at_step_2(epoch: int, step: int) -> None:
        if (epoch, step) == (0, 2):
            os.kill(os.getpid(), signal.SIGUSR1)

    with StopSignals() as signals, pytest.raises(TrainingInterrupted, match="SIGUSR1: saved checkpoint"):
        run("part", signals, on_step=signal_at_step_2)
    saved = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    assert (saved["state"]["epoch"], saved["state"]["step"]) == (0, 2)
    resumed, history = run("part")
    assert history == full_history
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the comparison can fail: the weights at the interruption are not the final ones
    assert not torch.equal(saved["tower"]["proj.0.weight"], b["proj.0.weight"])


def test_missing_clip_cache_names_model_and_command(tmp_path: Path) -> None:
    model_id = DEFAULT_CLIP_MODEL
    with pytest.raises(ClipNotCachedError, match=r"openai/clip-vit-large-patch14") as err:
        ClipImageTower(model_id, cache_dir=tmp_path / "empty-hf-cache")
    msg = str(err.value)
    assert f"`hf download {model_id}`" in msg
    _assert_hint_command_works(msg)
    assert "geoclip.clip_model" in msg and "HF_HOME" in msg and str(tmp_path / "empty-hf-cache") in msg
    with pytest.raises(ClipNotCachedError, match="geoens-test/no-such-clip"):
        load_image_tower("clip", None, "geoens-test/no-such-clip")
    with pytest.raises(GeoClipError, match="unknown value 'vit'"):
        load_image_tower("vit", None)


PEER_FINE = Path("/work/shared/reference/peers/GeoEstimation/geo-cells/cells_50_1000.csv")


@pytest.mark.skipif(not PEER_FINE.exists(), reason="peer reference data not available")
def test_reads_real_geoestimation_fine_partition(tmp_path: Path, encoder: LocationEncoder) -> None:
    part = read_cell_partition(PEER_FINE)
    assert len(part) == 12893
    assert part["class_label"].tolist() == list(range(12893))
    assert part["hex_id"].str.fullmatch(r"[0-9a-f]+").all()  # S2 tokens kept as strings
    # The first cells, embedded through the cache path, equal direct embeddings of their mean locations.
    head = tmp_path / "head.csv"
    head.write_text("".join(PEER_FINE.open().readlines()[: 2 + 1 + 50]))
    emb = cell_embeddings(head, tmp_path / "c.parquet", encoder=encoder)
    want = embed_locations(part["latitude_mean"][:50], part["longitude_mean"][:50], encoder)
    np.testing.assert_allclose(emb, want, atol=1e-6)


def _assert_hint_command_works(msg: str) -> None:
    """The download command a hint names exists in the installed huggingface_hub client."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    cmd = re.search(r"`(hf download [^`]+)`", msg)
    assert cmd, msg
    exe = Path(sys.executable).with_name("hf")
    proc = subprocess.run([str(exe), "download", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "REPO_ID" in proc.stdout
