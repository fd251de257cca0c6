"""Every training and evaluation setting of the 10 rendered eva tasks equals eva's own config.

Expected values are written out per task, next to the upstream file they come from
(github.com/kaiko-ai/eva, `configs/vision/pathology/...`, the configs of kaiko-eva 0.4.5, the
leaderboard protocol: offline for classification, online for segmentation). Where our template
spells a setting differently (a loss function instead of its class, because recent jsonargparse
refuses loss classes for eva's criterion type), the comment names the upstream value and the
expected value is the equivalent one we render.

Model-dependent values (normalisation, input size, head input width) come from the model: the
renderer gets a fixed ModelInfo here (mean 0.5, std 0.25, 224 px, 64-d), as eva's replication
guide sets NORMALIZE_MEAN / NORMALIZE_STD / RESIZE_DIM / IN_FEATURES per model.
"""

from __future__ import annotations

import pytest
from helpers import render_eva_config as _render

from mint.eva.tasks import LEADERBOARD_TASKS, TASKS

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
RESIZE_AND_CROP = {
    "class_path": "eva.vision.data.transforms.common.ResizeAndCrop",
    "init_args": {"size": 224, "mean": MEAN, "std": STD},
}
CE = "torch.nn.functional.cross_entropy"  # upstream: torch.nn.CrossEntropyLoss
BCE = "torch.nn.functional.binary_cross_entropy_with_logits"  # upstream: torch.nn.BCEWithLogitsLoss
MULTICLASS = ["eva.metrics.AverageLoss", "eva.metrics.MulticlassClassificationMetrics"]
BINARY = ["eva.metrics.AverageLoss", "eva.metrics.BinaryClassificationMetrics"]


def _patch(**kw) -> dict:
    """Fields every patch task shares are still written per task below; this only fills the
    dict so each task entry lists its own values explicitly."""
    return kw


EXPECTED: dict[str, dict] = {
    # configs/vision/pathology/offline/classification/bach.yaml
    "bach": _patch(
        n_runs=5, max_steps=12500, max_epochs=None, batch_size=256, predict_batch_size=64,
        optimizer="torch.optim.AdamW", lr=0.0003, patience=1250,
        monitor="val/MulticlassAccuracy", head="torch.nn.Linear", head_args={"out_features": 4},
        criterion=CE, metrics=MULTICLASS, fit_splits={"train": "train", "val": "val"},
        images="eva.vision.datasets.BACH", image_splits=["train", "val"],
        writer_map={0: "train", 1: "val"}, transforms=RESIZE_AND_CROP,
    ),
    # configs/vision/pathology/offline/classification/breakhis.yaml
    "breakhis": _patch(
        n_runs=5, max_steps=12500, max_epochs=None, batch_size=256, predict_batch_size=64,
        optimizer="torch.optim.AdamW", lr=0.0003, patience=500,
        monitor="val/MulticlassAccuracy", head="torch.nn.Linear", head_args={"out_features": 4},
        criterion=CE, metrics=MULTICLASS, fit_splits={"train": "train", "val": "val"},
        images="eva.vision.datasets.BreaKHis", image_splits=["train", "val"],
        writer_map={0: "train", 1: "val"}, transforms=RESIZE_AND_CROP,
    ),
    # configs/vision/pathology/offline/classification/crc.yaml
    "crc": _patch(
        n_runs=5, max_steps=12500, max_epochs=None, batch_size=256, predict_batch_size=64,
        optimizer="torch.optim.AdamW", lr=0.0003, patience=7,
        monitor="val/MulticlassAccuracy", head="torch.nn.Linear", head_args={"out_features": 9},
        criterion=CE, metrics=MULTICLASS, fit_splits={"train": "train", "val": "val"},
        images="eva.vision.datasets.CRC", image_splits=["train", "val"],
        writer_map={0: "train", 1: "val"}, transforms=RESIZE_AND_CROP,
    ),
    # configs/vision/pathology/offline/classification/gleason_arvaniti.yaml
    "gleason_arvaniti": _patch(
        n_runs=5, max_steps=12500, max_epochs=None, batch_size=256, predict_batch_size=64,
        optimizer="torch.optim.AdamW", lr=0.0003, patience=42,
        monitor="val/MulticlassAccuracy", head="torch.nn.Linear", head_args={"out_features": 4},
        criterion=CE, metrics=MULTICLASS, fit_splits={"train": "train", "val": "val"},
        images="eva.vision.datasets.GleasonArvaniti", image_splits=["train", "val"],
        writer_map={0: "train", 1: "val"}, transforms=RESIZE_AND_CROP,
    ),
    # configs/vision/pathology/offline/classification/mhist.yaml (MHIST's test split is the
    # validation split: writer 1 -> test, head dataset val reads split test)
    "mhist": _patch(
        n_runs=5, max_steps=12500, max_epochs=None, batch_size=256, predict_batch_size=64,
        optimizer="torch.optim.AdamW", lr=0.0003, patience=278,
        monitor="val/BinaryBalancedAccuracy", head="torch.nn.Linear", head_args={"out_features": 1},
        criterion=BCE, metrics=BINARY, fit_splits={"train": "train", "val": "test"},
        images="eva.vision.datasets.MHIST", image_splits=["train", "test"],
        writer_map={0: "train", 1: "test"}, transforms=RESIZE_AND_CROP,
    ),
    # configs/vision/pathology/offline/classification/patch_camelyon.yaml
    "patch_camelyon": _patch(
        n_runs=5, max_steps=12500, max_epochs=None, batch_size=256, predict_batch_size=64,
        optimizer="torch.optim.AdamW", lr=0.0003, patience=3,
        monitor="val/BinaryBalancedAccuracy", head="torch.nn.Linear", head_args={"out_features": 1},
        criterion=BCE, metrics=BINARY,
        fit_splits={"train": "train", "val": "val", "test": "test"},
        images="eva.vision.datasets.PatchCamelyon", image_splits=["train", "val", "test"],
        writer_map={0: "train", 1: "val", 2: "test"}, transforms=RESIZE_AND_CROP,
    ),
    # configs/vision/pathology/offline/classification/camelyon16_small.yaml: 100 epochs, no
    # max_steps, no lr scheduler (removed upstream with the move to 20 runs), patience 20
    "camelyon16_small": _patch(
        n_runs=20, max_steps=None, max_epochs=100, batch_size=32, predict_batch_size=64,
        optimizer="torch.optim.AdamW", lr=0.001, patience=20,
        monitor="val/BinaryBalancedAccuracy", head="eva.vision.models.networks.ABMIL",
        head_args={"output_size": 1, "projected_input_size": 128},
        criterion=BCE, metrics=BINARY,
        fit_splits={"train": "train", "val": "val", "test": "test"},
        images="eva.vision.datasets.Camelyon16", image_splits=["train", "val", "test"],
        writer_map={0: "train", 1: "val", 2: "test"}, transforms=RESIZE_AND_CROP,
        slide={"width": 224, "height": 224, "target_mpp": 0.25, "n_patches": 1000,
               "sampler": "eva.vision.data.wsi.patching.samplers.ForegroundGridSampler"},
    ),
    # configs/vision/pathology/offline/classification/panda_small.yaml: as camelyon16_small
    "panda_small": _patch(
        n_runs=20, max_steps=None, max_epochs=100, batch_size=32, predict_batch_size=64,
        optimizer="torch.optim.AdamW", lr=0.001, patience=20,
        monitor="val/MulticlassAccuracy", head="eva.vision.models.networks.ABMIL",
        head_args={"output_size": 6, "projected_input_size": 128},
        criterion=CE, metrics=MULTICLASS,
        fit_splits={"train": "train", "val": "val", "test": "test"},
        images="eva.vision.datasets.PANDASmall", image_splits=["train", "val", "test"],
        writer_map={0: "train", 1: "val", 2: "test"}, transforms=RESIZE_AND_CROP,
        slide={"width": 224, "height": 224, "target_mpp": 0.5, "n_patches": 200,
               "sampler": "eva.vision.data.wsi.patching.samplers.ForegroundGridSampler"},
    ),
    # configs/vision/pathology/online/segmentation/consep.yaml: patience 200 (not derived)
    "consep": _patch(
        n_runs=5, max_steps=2000, max_epochs=None, batch_size=64,
        optimizer="torch.optim.AdamW", lr=0.002, patience=200, monitor="val/MonaiDiceScore",
        head="eva.vision.models.networks.decoders.segmentation.ConvDecoderWithImage",
        head_args={"num_classes": 5},
        criterion="mint.eva.functional.dice_loss",  # upstream DiceLoss(softmax, batch)
        metrics=["eva.metrics.AverageLoss"],
        evaluation=["eva.vision.metrics.defaults.MulticlassSegmentationMetrics",
                    "torchmetrics.ClasswiseWrapper"],
        images="eva.vision.datasets.CoNSeP", fit_splits={"train": "train", "val": "val"},
        train_transforms=RESIZE_AND_CROP, val_transforms=RESIZE_AND_CROP,
    ),
    # configs/vision/pathology/online/segmentation/monusac.yaml: RandomResizedCrop for train,
    # ResizeAndCrop on the test split (eva's validation), ignore_index 5, patience 100
    "monusac": _patch(
        n_runs=5, max_steps=2000, max_epochs=None, batch_size=64,
        optimizer="torch.optim.AdamW", lr=0.002, patience=100, monitor="val/MonaiDiceScore",
        head="eva.vision.models.networks.decoders.segmentation.ConvDecoderWithImage",
        head_args={"num_classes": 5},
        criterion="mint.eva.functional.dice_loss_ignore_5",  # upstream DiceLoss(..., ignore 5)
        metrics=["eva.metrics.AverageLoss"],
        evaluation=["eva.vision.metrics.defaults.MulticlassSegmentationMetrics",
                    "torchmetrics.ClasswiseWrapper"],
        images="eva.vision.datasets.MoNuSAC", fit_splits={"train": "train", "val": "test"},
        train_transforms={
            "class_path": "torchvision.transforms.v2.Compose",
            "init_args": {"transforms": [
                {"class_path": "torchvision.transforms.v2.RandomResizedCrop",
                 "init_args": {"size": 224}},
                {"class_path": "torchvision.transforms.v2.ToDtype",
                 "init_args": {"dtype": "torch.float32", "scale": True}},
                {"class_path": "torchvision.transforms.v2.Normalize",
                 "init_args": {"mean": MEAN, "std": STD}},
            ]},
        },
        val_transforms=RESIZE_AND_CROP,
    ),
}  # fmt: skip


def _callback(cfg: dict, suffix: str) -> dict:
    found = [
        cb
        for cb in cfg["trainer"]["init_args"].get("callbacks", [])
        if cb["class_path"].endswith(suffix)
    ]
    assert len(found) == 1, suffix
    return found[0]["init_args"]


def test_expected_table_covers_the_leaderboard_tasks():
    assert set(EXPECTED) == set(LEADERBOARD_TASKS)


@pytest.mark.parametrize("task", LEADERBOARD_TASKS)
def test_rendered_config_equals_evas_config(tmp_path, task):
    exp = EXPECTED[task]
    fit = _render(tmp_path, task, "fit")
    trainer = fit["trainer"]["init_args"]
    model = fit["model"]["init_args"]
    data = fit["data"]["init_args"]

    # training length and repetitions
    assert trainer["n_runs"] == exp["n_runs"]
    assert trainer.get("max_steps") == exp["max_steps"]
    assert trainer.get("max_epochs") == exp["max_epochs"]
    assert trainer["checkpoint_type"] == "best"
    assert "precision" not in trainer  # eva's default (32-bit), as the leaderboard ran
    # early stopping and checkpoint selection
    stop = _callback(fit, "EarlyStopping")
    assert (stop["patience"], stop["monitor"], stop["mode"]) == (
        exp["patience"],
        exp["monitor"],
        "max",
    )
    assert stop["min_delta"] == 0
    ckpt = _callback(fit, "ModelCheckpoint")
    assert (ckpt["monitor"], ckpt["mode"], ckpt["save_top_k"]) == (exp["monitor"], "max", 1)
    # optimizer, schedule
    assert model["optimizer"]["class_path"] == exp["optimizer"]
    opt_args = model["optimizer"]["init_args"]
    assert opt_args["lr"] == exp["lr"]
    assert opt_args.get("betas", [0.9, 0.999]) == [0.9, 0.999]  # AdamW default
    assert set(opt_args) <= {"lr", "betas"}
    assert "lr_scheduler" not in model  # no eva config uses one
    # head and loss
    head = model["head"] if "head" in model else model["decoder"]
    assert head["class_path"] == exp["head"]
    for key, val in exp["head_args"].items():
        assert head["init_args"][key] == val, key
    assert model["criterion"] == exp["criterion"]
    assert [m["class_path"] for m in model["metrics"]["common"]] == exp["metrics"]
    if "evaluation" in exp:
        assert [m["class_path"] for m in model["metrics"]["evaluation"]] == exp["evaluation"]
        assert model["lr_multiplier_encoder"] == 0.0
    # batch sizes
    assert data["dataloaders"]["train"]["batch_size"] == exp["batch_size"]
    assert data["dataloaders"]["train"]["shuffle"] is True
    for split in exp["fit_splits"]:
        if split != "train":
            assert data["dataloaders"][split]["batch_size"] == exp["batch_size"]
    # datasets, splits and transforms
    ds = data["datasets"]
    assert {k: v["init_args"]["split"] for k, v in ds.items()} == exp["fit_splits"]
    if TASKS[task].offline:
        pred = _render(tmp_path, task, "predict")
        pds = pred["data"]["init_args"]["datasets"]["predict"]
        assert [d["class_path"] for d in pds] == [exp["images"]] * len(exp["image_splits"])
        assert [d["init_args"]["split"] for d in pds] == exp["image_splits"]
        assert (
            pred["data"]["init_args"]["dataloaders"]["predict"]["batch_size"]
            == (exp["predict_batch_size"])
        )
        writer = _callback(pred, "EmbeddingsWriter")
        assert writer["dataloader_idx_map"] == exp["writer_map"]
        assert writer["overwrite"] is False
        key = "image_transforms" if "slide" in exp else "transforms"
        for d in pds:
            assert d["init_args"][key] == exp["transforms"]
        if "slide" in exp:
            s = exp["slide"]
            args = pds[0]["init_args"]
            assert (args["width"], args["height"], args["target_mpp"]) == (
                s["width"], s["height"], s["target_mpp"]
            )  # fmt: skip
            assert args["sampler"]["class_path"] == s["sampler"]
            assert args["sampler"]["init_args"]["max_samples"] == s["n_patches"]
            for split in exp["fit_splits"]:
                pad = ds[split]["init_args"]["embeddings_transforms"]["init_args"]["pad_size"]
                assert pad == s["n_patches"]
    else:
        assert {v["class_path"] for v in ds.values()} == {exp["images"]}
        assert ds["train"]["init_args"]["transforms"] == exp["train_transforms"]
        assert ds["val"]["init_args"]["transforms"] == exp["val_transforms"]
        encoder = model["encoder"]["init_args"]
        assert encoder["segmentation"] is True and encoder.get("n_feature_maps", 1) == 1
