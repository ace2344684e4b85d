"""Training loop, resume, hierarchical combination, cached predictions, pretrained-weight errors (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fakes import colour_jpeg, write_label_parts, write_msgpack_shards, write_partition_csv
from geoens.models.datasets import FolderSource, ShardSource
from geoens.models.nets import PretrainedWeightsMissingError, build_backbone, hierarchical_combine
from geoens.models.predictors import (
    load_model,
    majority_baseline,
    predict,
    predict_to_parquet,
    torchrun_command,
    train_model,
)
from geoens.models.training.config import TrainerConfig, TrainingError, select_rows
from geoens.models.training.inputs import hierarchy_parents, partition_sizes

#: One clearly different colour per class, so that a tiny CNN can learn the classes in a few steps.
COLOURS = np.array(
    [[220, 30, 30], [30, 200, 40], [40, 60, 230], [230, 220, 40], [200, 40, 200], [40, 210, 210], [128] * 3]
)
FINE_TO_MIDDLE = [0, 0, 1, 2]
MIDDLE_TO_COARSE = [0, 0, 1]


def coloured_jpeg(cls: int, seed: int, size: int = 32) -> bytes:
    return colour_jpeg(COLOURS[cls], np.random.default_rng(seed), (size, size), quality=92)


def make_world(root: Path, n: int = 24, n_val: int = 4, corrupt: tuple[int, ...] = ()) -> dict[str, Path]:
    """Shards, label parts and partitions of ``n`` images; class of image k is ``k % 4``."""
    shards = root / "shards"
    rows = []
    records: list[list[dict[str, object]]] = []
    for s in range(2):
        records.append([])
        for k in range(s, n, 2):
            cls = k % 4
            data = b"garbage, not a JPEG" if k in corrupt else coloured_jpeg(cls, k)
            records[s].append({"id": f"img{k:03d}", "image": data})
            rows.append(
                {
                    "image_id": f"img{k:03d}",
                    "lat": 10.0 + k,
                    "lon": 20.0 - k,
                    "ls_value": float(k),
                    "ls_bucket": np.int8(cls),
                    "lc_code": np.uint8(10),
                    "lc22": np.uint8(10),
                    "lc7": np.int8(cls if k != 1 else -1),
                    "cell_coarse": np.int32(MIDDLE_TO_COARSE[FINE_TO_MIDDLE[cls]]),
                    "cell_middle": np.int32(FINE_TO_MIDDLE[cls]),
                    "cell_fine": np.int32(cls),
                    "split": "val" if k >= n - n_val else "train",
                    "attr_keep": k != 2,
                }
            )
    write_msgpack_shards(shards, records)
    labels = write_label_parts(root / "labels", pd.DataFrame(rows), n_parts=2)
    parts = root / "partitions"
    parts.mkdir()
    for level, count in (("coarse", 2), ("middle", 3), ("fine", 4)):
        write_partition_csv(parts / f"{level}.csv", [f"{c},{c + 1}b,{6},{c}.0,{c}.0" for c in range(count)])
    pd.DataFrame(
        {
            "fine": np.arange(4, dtype=np.int32),
            "middle": np.array(FINE_TO_MIDDLE, np.int32),
            "coarse": np.array([MIDDLE_TO_COARSE[m] for m in FINE_TO_MIDDLE], np.int32),
        }
    ).to_parquet(parts / "hierarchy.parquet", index=False)
    return {"shards": shards, "labels": labels, "partitions": parts}


FAST = {"backbone": "test_resnet", "image_size": 32, "batch_size": 4, "lr": 0.003, "patience": 100}


def test_hierarchical_combine_matches_hand_computation() -> None:
    p_coarse = np.array([0.7, 0.3])
    p_middle = np.array([0.5, 0.2, 0.3])
    p_fine = np.array([0.1, 0.4, 0.25, 0.25])
    hierarchy = pd.DataFrame({"fine": [0, 1, 2, 3], "middle": FINE_TO_MIDDLE, "coarse": [0, 0, 0, 1]})
    # by hand: fine * middle(parent) * coarse(parent)
    raw = np.array([0.1 * 0.5 * 0.7, 0.4 * 0.5 * 0.7, 0.25 * 0.2 * 0.7, 0.25 * 0.3 * 0.3])
    expected = raw / raw.sum()  # = [0.035, 0.14, 0.035, 0.0225] / 0.2325
    got = hierarchical_combine(p_coarse, p_middle, p_fine, hierarchy)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(got[0], 0.035 / 0.2325, rtol=1e-12)
    # batched torch input, array hierarchy, and a fine cell without a middle parent (factor 1)
    batch = hierarchical_combine(
        torch.tensor(np.stack([p_coarse, p_coarse])),
        torch.tensor(np.stack([p_middle, p_middle])),
        torch.tensor(np.stack([p_fine, p_fine])),
        np.array([[0, 0], [0, 0], [1, 0], [-1, 1]]),
    )
    raw2 = raw.copy()
    raw2[3] = 0.25 * 1.0 * 0.3
    np.testing.assert_allclose(batch[1], raw2 / raw2.sum(), rtol=1e-12)
    with pytest.raises(ValueError, match="hierarchy has 3 fine cells"):
        hierarchical_combine(p_coarse, p_middle, p_fine, np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="'middle' labels outside"):
        hierarchical_combine(p_coarse, p_middle, p_fine, np.array([[0, 0], [0, 0], [5, 0], [2, 1]]))


def test_select_rows_filters_by_model(tmp_path: Path) -> None:
    paths = make_world(tmp_path)
    labels = pd.concat([pd.read_parquet(p) for p in sorted(paths["labels"].glob("*.parquet"))])
    ls_rows, ls_t = select_rows(labels, "ls")
    assert "img002" not in set(ls_rows["image_id"])  # attr_keep False
    assert ls_rows["image_id"].is_monotonic_increasing and ls_t.shape == (23,)
    lc_rows, _ = select_rows(labels, "lc")
    assert {"img001", "img002"}.isdisjoint(lc_rows["image_id"])  # no lc7, not kept
    geo_rows, geo_t = select_rows(labels, "geoest")
    assert len(geo_rows) == 24 and geo_t.shape == (24, 3)
    with pytest.raises(KeyError, match="cell_fine"):
        select_rows(labels.drop(columns="cell_fine"), "geoest")
    assert partition_sizes(paths["partitions"]) == (2, 3, 4)
    np.testing.assert_array_equal(
        hierarchy_parents(paths["partitions"] / "hierarchy.parquet")[:, 0], FINE_TO_MIDDLE
    )


def test_overfits_handful_of_images(tmp_path: Path) -> None:
    paths = make_world(tmp_path, n=16, n_val=4)
    out = tmp_path / "models" / "ls"
    summary = train_model(
        "ls", paths["labels"], paths["shards"], out, {**FAST, "epochs": 12}, num_workers=0, seed=1, threads=2
    )
    assert summary["epochs"] == 12 and not summary["interrupted"]
    for name in ("model.pt", "metrics.csv", "curve.png", "confusion.png", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["epoch"]) == list(range(1, 13))
    assert {"train_loss", "val_loss", "val_acc", "skipped_train", "images_per_s"} <= set(metrics.columns)
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    labels = pd.concat([pd.read_parquet(p) for p in sorted(paths["labels"].glob("*.parquet"))])
    train = labels[(labels["split"] == "train") & labels["attr_keep"]]
    pred = predict(out / "model.pt", ShardSource(paths["shards"]), train["image_id"].tolist())
    truth = dict(zip(train["image_id"], train["ls_bucket"], strict=True))
    acc = np.mean([truth[i] == c for i, c in zip(pred["image_id"], pred["top_class"], strict=True)])
    assert acc >= 0.9
    net, meta = load_model(out / "model.pt")
    assert meta["backbone"] == "test_resnet" and meta["heads"] == {"ls": 4} and meta["image_size"] == 32
    assert meta["classes"]["ls"] == ["lowest", "low", "medium", "high"]
    # summary.json: best-epoch accuracy next to the majority baseline (train's most common class is 0,
    # the four val images are one of each class)
    saved = json.loads((out / "summary.json").read_text())
    best = metrics.loc[metrics["epoch"] == saved["best_epoch"], "val_acc"].item()
    assert saved["heads"] == ["ls"] and saved["val_acc"] == {"ls": pytest.approx(best)}
    assert saved["val_majority_acc"] == {"ls": 0.25}
    assert (saved["n_train"], saved["n_val"]) == (11, 4)


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path: Path) -> None:
    paths = make_world(tmp_path, n=12, n_val=3)
    cfg = {**FAST, "epochs": 3}
    common = {"num_workers": 0, "seed": 5, "threads": 2}
    full = train_model("lc", paths["labels"], paths["shards"], tmp_path / "full", cfg, **common)
    part = train_model(
        "lc", paths["labels"], paths["shards"], tmp_path / "part", cfg, stop_after_epochs=2, **common
    )
    assert part["interrupted"] and not (tmp_path / "part" / "model.pt").exists()
    after_two = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["model"]
    resumed = train_model("lc", paths["labels"], paths["shards"], tmp_path / "part", cfg, **common)
    assert resumed["epochs"] == full["epochs"] == 3 and resumed["best_epoch"] == full["best_epoch"]
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "part" / "model.pt", weights_only=False)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    ca = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    cb = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["model"]
    for key in ca:
        torch.testing.assert_close(ca[key], cb[key], rtol=1e-5, atol=1e-6)
    # the comparison can fail: the third epoch did change the weights
    assert not torch.allclose(after_two["heads.lc.weight"], cb["heads.lc.weight"])
    ma, mb = pd.read_csv(tmp_path / "full" / "metrics.csv"), pd.read_csv(tmp_path / "part" / "metrics.csv")
    cols = ["train_loss", "val_loss", "val_acc"]
    np.testing.assert_allclose(ma[cols], mb[cols], rtol=1e-6)


def test_geoest_with_corrupt_images_and_cached_predictions(tmp_path: Path) -> None:
    paths = make_world(tmp_path, n=16, n_val=4, corrupt=(3, 14))
    out = tmp_path / "models" / "geoest"
    summary = train_model(
        "geoest",
        paths["labels"],
        paths["shards"],
        out,
        {**FAST, "epochs": 2},
        partitions_dir=paths["partitions"],
        shard_index=tmp_path / "index.parquet",
        num_workers=0,
    )
    assert (tmp_path / "index.parquet").exists()
    metrics = pd.read_csv(out / "metrics.csv")
    assert {"val_acc_coarse", "val_acc_middle", "val_acc_fine"} <= set(metrics.columns)
    assert metrics["skipped_train"].tolist() == [1, 1]  # img003 (train) every epoch
    assert metrics["skipped_val"].tolist() == [1, 1]  # img014 (val)
    assert summary["skipped_train_images"] == 2
    _, meta = load_model(out / "model.pt")
    assert meta["heads"] == {"coarse": 2, "middle": 3, "fine": 4}
    saved = json.loads((out / "summary.json").read_text())
    assert saved["heads"] == ["coarse", "middle", "fine"]
    assert set(saved["val_majority_acc"]) == set(saved["val_acc"]) == {"coarse", "middle", "fine"}
    # test-set style folder with one undecodable image
    folder = tmp_path / "testset"
    folder.mkdir()
    for k in range(5):
        (folder / f"t{k}.jpg").write_bytes(coloured_jpeg(k % 4, 100 + k) if k != 2 else b"\x00\x01")
    ids = [f"t{k}.jpg" for k in range(5)]
    pq_path = tmp_path / "pred" / "geoest.parquet"
    side = tmp_path / "pred" / "geoest.skipped.json"
    res = predict_to_parquet(out / "model.pt", FolderSource(folder), ids, pq_path, side, batch_size=2)
    assert res["n_skipped"] == 1 and json.loads(side.read_text())["skipped_ids"] == ["t2.jpg"]
    table = pq.read_table(pq_path)
    assert table.schema.field("probs").type == pa.list_(pa.float32(), 4)
    assert table.schema.field("top_class").type == pa.int32()
    assert table.column("image_id").to_pylist() == ["t0.jpg", "t1.jpg", "t3.jpg", "t4.jpg"]
    probs = np.stack(table.column("probs").to_numpy(zero_copy_only=False))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1, dtype=np.float64), 1.0, atol=1e-6)
    np.testing.assert_array_equal(probs.argmax(axis=1), table.column("top_class").to_numpy())
    # same numbers as the in-memory predictor
    df = predict(out / "model.pt", FolderSource(folder), ids)
    np.testing.assert_allclose(np.stack(df["probs"]), probs, rtol=1e-6)
    assert df.attrs["skipped"] == ["t2.jpg"]


def test_majority_baseline_uses_training_majority_per_head() -> None:
    train = np.array([[0, 5], [1, 5], [1, 6], [2, 6], [1, 6]])
    val = np.array([[1, 5], [0, 6], [1, 6], [2, 6]])
    got = majority_baseline(train, val, ["coarse", "fine"])
    assert got == {"coarse": 0.5, "fine": 0.75}
    assert majority_baseline(np.array([3, 3, 1]), np.array([1, 1, 1, 3]), ["ls"]) == {"ls": 0.25}
    assert np.isnan(majority_baseline(np.array([1]), np.array([], np.int64), ["ls"])["ls"])


def test_training_errors_are_clear(tmp_path: Path) -> None:
    paths = make_world(tmp_path, n=8, n_val=2)
    other = tmp_path / "other_shards"
    write_msgpack_shards(other, [[{"id": "zzz", "image": coloured_jpeg(0, 0)}]])
    with pytest.raises(TrainingError, match="none of the 6 training ids"):
        train_model(
            "geoest", paths["labels"], other, tmp_path / "x", FAST, partitions_dir=paths["partitions"]
        )
    with pytest.raises(ValueError, match="unknown trainer config key.*'epoch'"):
        TrainerConfig.from_mapping({"epoch": 3})
    with pytest.raises(ValueError, match="unknown augment key.*'hflp'"):
        TrainerConfig.from_mapping({"augment": {"hflp": False}})
    with pytest.raises(ValueError, match="crop_scale_min must be in"):
        TrainerConfig.from_mapping({"augment": {"crop_scale_min": 0.0}})
    with pytest.raises(ValueError, match="geoest needs partitions_dir"):
        train_model("geoest", paths["labels"], paths["shards"], tmp_path / "x", FAST)


def test_missing_pretrained_weights_raise_quickly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("GEOENS_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(
        PretrainedWeightsMissingError, match=r"`hf download timm/resnetv2_50x1_bit\.goog_in21k`"
    ):
        build_backbone("resnetv2_50x1_bit.goog_in21k", pretrained=True)
    with pytest.raises(PretrainedWeightsMissingError, match="pretrained_file .*nope.safetensors"):
        build_backbone("resnet18", pretrained=True, pretrained_file=tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="unknown timm backbone 'not_a_model'"):
        build_backbone("not_a_model")


def test_pretrained_file_is_loaded(tmp_path: Path) -> None:
    src, dim = build_backbone("resnet18")
    assert dim == 512
    from safetensors.torch import save_file

    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    loaded, _ = build_backbone("resnet18", pretrained=True, pretrained_file=tmp_path / "w.safetensors")
    for (k, a), b in zip(src.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_torchrun_command() -> None:
    cmd = torchrun_command(["--model", "ls"], 4)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc_per_node=4" in cmd and cmd[-4:] == ["-m", "geoens.models.predictors", "--model", "ls"]


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path: Path) -> None:
    """``--gpus 2`` re-launches the same CLI under torchrun (gloo on CPU); rank 0 writes the outputs."""
    from geoens.models.predictors import main

    paths = make_world(tmp_path, n=16, n_val=4)
    out = tmp_path / "ddp"
    argv = ["--model", "ls", "--labels", str(paths["labels"]), "--shards", str(paths["shards"])]
    argv += ["--out", str(out), "--trainer", json.dumps({**FAST, "epochs": 2}), "--device", "cpu"]
    argv += ["--num-workers", "0", "--threads", "1", "--gpus", "2", "--logfile", str(tmp_path / "ddp.log")]
    assert main(argv) == 0
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
    _, meta = load_model(out / "model.pt")
    assert meta["epochs_run"] == 2
    assert "world 2" in (tmp_path / "ddp.log").read_text()


def test_prediction_dataset_val_and_testset(tmp_path: Path) -> None:
    from geoens.models.predictors import prediction_dataset

    paths = make_world(tmp_path, n=12, n_val=3)
    source, ids = prediction_dataset("val", paths["labels"], paths["shards"], tmp_path / "no_index.parquet")
    assert ids == ["img009", "img010", "img011"] and isinstance(source, ShardSource)
    assert source.read("img010") is not None
    assert not (tmp_path / "no_index.parquet").exists()  # prediction never writes the shared index
    folder = tmp_path / "images"
    folder.mkdir()
    pd.DataFrame({"image_id": ["b.jpg", "a.jpg"], "split": "test"}).to_parquet(tmp_path / "ts.parquet")
    source, ids = prediction_dataset("im2gps3k", tmp_path / "ts.parquet", folder)
    assert ids == ["b.jpg", "a.jpg"] and isinstance(source, FolderSource)


def test_prediction_files_share_one_schema_and_skipped_summary(tmp_path: Path) -> None:
    from geoens.models.training.predictions import (
        prediction_schema,
        prediction_table,
        write_predictions,
        write_skipped,
    )

    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]])
    chunks = [(["a", "b"], probs), (["c"], probs[:1])]
    assert write_predictions(tmp_path / "p.parquet", chunks, 3) == 3
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.schema == prediction_schema(3)
    assert table["top_class"].to_pylist() == [1, 0, 1]
    with pytest.raises(ValueError, match="2 image ids but probs of shape"):
        prediction_table(["a", "b"], probs[:1])
    summary = write_skipped(4, 3, ["d"], tmp_path / "p.skipped.json")
    assert summary == {"n_requested": 4, "n_predicted": 3, "n_skipped": 1, "skipped_ids": ["d"]}
    assert json.loads((tmp_path / "p.skipped.json").read_text()) == summary


def test_split_rows_keeps_a_seeded_subset_and_needs_training_rows() -> None:
    from geoens.models.training.inputs import split_rows

    rows = pd.DataFrame({"image_id": [f"i{k}" for k in range(10)], "split": ["train"] * 8 + ["val"] * 2})
    cfg = TrainerConfig(max_train_images=3)
    a = split_rows(rows, cfg, 5, "ls", "labels")
    b = split_rows(rows, cfg, 5, "ls", "labels")
    assert a[2] == b[2] and len(a[2]) == 3 and a[3] == ["i8", "i9"]
    assert list(a[0]) == sorted(a[0])  # file order kept
    with pytest.raises(TrainingError, match="no training row"):
        split_rows(rows[rows["split"] == "val"], cfg, 5, "ls", "labels")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_error_for_both_trainers() -> None:
    from geoens.models.training.runtime import DeviceUnavailableError, resolve_device

    assert resolve_device("auto").type == "cpu"
    with pytest.raises(DeviceUnavailableError, match="sees no GPU"):
        resolve_device("cuda")


def test_early_stopping_update() -> None:
    from geoens.models.training.runtime import early_stopping_update

    state = {"best_val_loss": float("inf"), "best_epoch": 0, "bad_epochs": 0, "stopped": False}
    losses = [1.0, 0.8, 0.8, 0.7, 0.75, 0.71]
    flags = [early_stopping_update(state, v, e + 1, patience=2) for e, v in enumerate(losses[:5])]
    assert flags == [True, True, False, True, False] and not state["stopped"]
    assert early_stopping_update(state, losses[5], 6, patience=2) is False
    assert state["stopped"] and state["best_epoch"] == 4 and state["best_val_loss"] == 0.7
    empty = {"best_val_loss": float("inf"), "best_epoch": 0, "bad_epochs": 0, "stopped": False}
    assert all(early_stopping_update(empty, None, e, patience=1) for e in (1, 2, 3))
    assert empty["best_epoch"] == 3 and not empty["stopped"]


@pytest.mark.parametrize("name", ["resnet18", "lcnet_050", "mobilenetv3_small_100"])
def test_backbone_feature_dim_matches_pooled_output(name: str) -> None:
    # LCNet / MobileNetV3 have a conv head after pooling: the reported width must be what forward() returns.
    from geoens.models.nets import build_backbone

    net, dim = build_backbone(name, pretrained=False, num_classes=0)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, dim)
