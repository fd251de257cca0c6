"""The eva integration (mint/eva) without running eva's training: every task config renders and
eva's own CLI accepts it, the backbone is built the way eva builds it, missing data is reported
per task, and the summary reads eva's results format. The run of real `eva predict` / `eva fit`
on the synthetic task is in test_eva_e2e.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import render_eva_config as _render

from mint.errors import MintError
from mint.eva import render as R
from mint.eva.tasks import AVERAGE_EXCLUDED, LEADERBOARD_TASKS, TASKS, early_stopping_patience

# Runs eva's real CLI (`eva fit|predict --config C --print_config`) on many configs in one
# process: eva's imports take seconds, so one interpreter for all of them.
PRINT_CONFIG_DRIVER = r"""
import contextlib, io, sys
from eva.core.cli import cli
for cfg in sys.argv[1:]:
    stage = "predict" if cfg.endswith(".predict.yaml") else "fit"
    sys.argv = ["eva", stage, "--config", cfg, "--print_config"]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    msg = err.getvalue().strip().splitlines()
    detail = "" if code == 0 else " :: " + " | ".join(msg[-6:])
    print(("OK " if code == 0 else "FAIL ") + cfg + detail)
"""


def _fake_synthetic_root(root: Path, n_classes: int = 5, per_split: int = 10) -> Path:
    d = root / "synthetic"
    for split in ("train", "val", "test"):
        (d / split).mkdir(parents=True, exist_ok=True)
    manifest = {
        "classes": [f"c{i}" for i in range(n_classes)],
        "splits": {s: per_split for s in ("train", "val", "test")},
    }
    (d / "classes.json").write_text(json.dumps(manifest))
    return d


def _writers(cfg: dict) -> list[dict]:
    return [
        cb
        for cb in cfg["trainer"]["init_args"]["callbacks"]
        if cb["class_path"].endswith("EmbeddingsWriter")
    ]


def test_task_registry_matches_templates_and_leaderboard():
    assert set(LEADERBOARD_TASKS) <= set(TASKS)
    assert len([t for t in LEADERBOARD_TASKS if t not in AVERAGE_EXCLUDED]) == 9
    templates = Path(R.__file__).parent / "templates"
    for name, spec in TASKS.items():
        assert (templates / spec.template).is_file(), name
    assert {t for t, s in TASKS.items() if not s.offline} == {"consep", "monusac"}
    assert TASKS["patch_camelyon"].headline_split == "test"
    assert TASKS["camelyon16_small"].n_runs == 20 and TASKS["crc"].n_runs == 5
    # eva's rule: 20% of the epochs, the epoch count capped for slide tasks
    assert early_stopping_patience(100_000, 256, 12_500, None) == 7
    assert early_stopping_patience(216, 32, 12_500, 100) == 20


def test_every_task_config_renders_and_eva_accepts_it(tmp_path):
    _fake_synthetic_root(tmp_path / "data")
    paths = []
    for task, spec in TASKS.items():
        for stage in ("predict", "fit") if spec.offline else ("fit",):
            cfg = _render(tmp_path, task, stage, accelerator="cpu", num_workers=0)
            text = R.dump_config(cfg, f"test {task} {stage}")
            assert "{{" not in text and "&id" not in text, (task, stage)
            if spec.offline and stage == "predict":
                assert _writers(cfg) and "train" not in cfg["data"]["init_args"]["datasets"]
                backbone = _writers(cfg)[0]["init_args"]["backbone"]
                assert backbone["class_path"] == "mint.eva.backbone.MintBackbone"
                for loader in cfg["data"]["init_args"]["dataloaders"].values():
                    assert loader["persistent_workers"] is False
            elif spec.offline:
                assert not _writers(cfg) and "predict" not in cfg["data"]["init_args"]["datasets"]
                assert "backbone" not in json.dumps(cfg)  # the fit step never loads the model
            else:
                assert cfg["model"]["init_args"]["encoder"]["init_args"]["segmentation"] is True
            path = tmp_path / "cfg" / f"{task}.{stage}.yaml"
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            paths.append(str(path))
    crc = _render(tmp_path, "crc", "fit")
    assert crc["trainer"]["init_args"]["max_steps"] == 12_500
    assert crc["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 3e-4
    assert crc["data"]["init_args"]["dataloaders"]["train"]["batch_size"] == 256
    panda = _render(tmp_path, "panda_small", "predict")
    assert panda["trainer"]["init_args"]["max_epochs"] == 100
    image_args = panda["data"]["init_args"]["datasets"]["predict"][0]["init_args"]
    assert image_args["image_transforms"]["init_args"]["mean"] == [0.5, 0.5, 0.5]

    proc = subprocess.run(
        [sys.executable, "-c", PRINT_CONFIG_DRIVER, *paths],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("OK ", "FAIL "))]
    assert len(lines) == len(paths), proc.stdout[-3000:] + proc.stderr[-3000:]
    failed = [ln for ln in lines if ln.startswith("FAIL")]
    assert not failed, "\n".join(failed)


def test_render_overrides_and_errors(tmp_path):
    cfg = _render(
        tmp_path,
        "crc",
        "fit",
        overrides={"max_steps": 50, "n_runs": 2, "batch_size": 16, "lr": 0.01},
    )
    t = cfg["trainer"]["init_args"]
    assert (t["max_steps"], t["n_runs"]) == (50, 2)
    assert cfg["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.01
    with pytest.raises(MintError, match="unknown override 'steps'"):
        _render(tmp_path, "crc", "fit", overrides={"steps": 5})
    with pytest.raises(MintError, match="no predict step"):
        _render(tmp_path, "consep", "predict")
    with pytest.raises(MintError, match="unknown"):
        _render(tmp_path, "not_a_task", "fit")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {init_args: {max_steps: '{{ max_stepz }}'}}\nmodel: {}\ndata: {}\n")
    with pytest.raises(MintError, match="max_stepz"):
        _render(tmp_path, "crc", "fit", template=str(bad))


def test_cli_render_offline_fit_needs_no_model(tmp_path):
    from mint.cli import main

    out = tmp_path / "crc.fit.yaml"
    rc = main(
        ["eva", "render", "--task", "crc", "--model", "uni", "--stage", "fit",
         "--in-features", "1024",
         "--data-root", str(tmp_path), "--embeddings-dir", str(tmp_path / "emb"),
         "--out", str(out), "--max-steps", "10"]
    )  # fmt: skip
    assert rc == 0
    cfg = yaml.safe_load(out.read_text())
    assert cfg["model"]["init_args"]["head"]["init_args"]["in_features"] == 1024
    assert cfg["trainer"]["init_args"]["max_steps"] == 10


def test_eva_results_key_is_the_workflows_model_key(tmp_path):
    """Without --model-name, `mint eva` names results as the workflow does (one function)."""
    from argparse import Namespace

    from mint.eva.cli import _model_name
    from mint.safe import model_key

    spec = "timm:vit_small_patch16_224@/ckpt/w.safetensors"
    assert model_key(spec) == "timm_vit_small_patch16_224_ckpt_w.safetensors"
    assert _model_name(Namespace(model_name=None, model=spec)) == model_key(spec)
    assert _model_name(Namespace(model_name="base", model=spec)) == "base"
    run_dir = tmp_path / "results" / "models" / "run1"
    run_dir.mkdir(parents=True)
    assert _model_name(Namespace(model_name=None, model=str(run_dir))) == "run1"
    smk = (Path(__file__).parents[1] / "workflow" / "rules" / "common.smk").read_text()
    assert "def model_key" not in smk and re.search(r"from mint\.safe import .*\bmodel_key\b", smk)


def test_model_info_without_weights():
    info = R.model_info("uni2-h")
    assert (info.embed_dim, info.img_size, info.has_st) == (1536, 224, False)
    assert R.model_info("h-optimus-0").mean[0] == pytest.approx(0.707223)


@pytest.fixture(scope="module")
def mint_model_dir(tmp_path_factory) -> Path:
    """A tiny exported MINT model (ST token + expression heads) in C's export format."""
    from mint.models.backbones import build_backbone
    from mint.models.heads import ExpressionHeads
    from mint.models.st_vit import STTokenViT
    from mint.train.export import export_model

    vit = build_backbone("tiny-vit", pretrained=True)
    backbone = STTokenViT(vit, st_token=True)
    heads = ExpressionHeads(backbone.embed_dim, {"visium": 3})
    out = tmp_path_factory.mktemp("models") / "mint"
    stats = {"visium": {"mean": [0.0] * 3, "std": [1.0] * 3}}
    export_model(out, backbone, heads, "tiny-vit", {"visium": ["A", "B", "C"]}, stats, {}, 1)
    return out


def _instantiate(type_, value):
    """Build an object from a class_path spec exactly as eva's jsonargparse CLI does."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(parser_mode="omegaconf")
    parser.add_argument("--obj", type=type_)
    # `instantiate` since jsonargparse 4.49; `instantiate_classes` before (what eva 0.4.5 calls)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(parser.parse_object({"obj": value})).obj


def test_backbone_built_like_eva(mint_model_dir):
    from mint.eva.backbone import MintBackbone

    x = torch.randn(2, 3, 224, 224)
    base = _instantiate(
        torch.nn.Module,
        {"class_path": "mint.eva.backbone.MintBackbone", "init_args": {"model": "tiny-vit"}},
    )
    assert isinstance(base, MintBackbone)
    with torch.no_grad():
        assert base(x).shape == (2, 64)
    base.train()
    assert not base.encoder.training  # frozen feature extractor stays in eval mode
    with pytest.raises(MintError, match="needs an ST token"):
        MintBackbone("tiny-vit", output="cls+st")

    mint = _instantiate(
        torch.nn.Module,
        {
            "class_path": "mint.eva.backbone.MintBackbone",
            "init_args": {"model": str(mint_model_dir), "output": "cls+st"},
        },
    )
    with torch.no_grad():
        emb = mint(x)
    assert emb.shape == (2, 128) and mint.embed_dim == 128
    info = R.model_info(str(mint_model_dir))
    assert info.has_st and info.embed_dim == 64

    # one eva.embedding setting for all models: base backbones fall back from cls+st to cls
    from mint.eva.run import _embedding_for_model

    opts = R.RenderOptions("crc", "tiny-vit", "base", "predict", "", output="cls+st")
    assert _embedding_for_model(opts).output == "cls"
    opts = R.RenderOptions("crc", str(mint_model_dir), "mint", "predict", "", output="cls+st")
    assert _embedding_for_model(opts).output == "cls+st"

    seg = MintBackbone(str(mint_model_dir), segmentation=True)
    with torch.no_grad():
        maps = seg(x)
    assert isinstance(maps, list) and maps[0].shape == (2, 64, 14, 14)


def test_segmentation_config_trains_a_step(tmp_path):
    """The online CoNSeP config's model part, built by jsonargparse as eva does, runs a step."""
    from eva.core.models.modules import ModelModule

    opts = R.RenderOptions(
        task="consep",
        model="tiny-vit",
        model_name="tiny-vit",
        stage="fit",
        output_root=str(tmp_path / "runs"),
        data_root=str(tmp_path / "data"),
    )
    cfg = R.render_config(opts)  # real model info from the registry
    assert cfg["model"]["init_args"]["decoder"]["init_args"]["in_features"] == 64
    module = _instantiate(ModelModule, cfg["model"])
    module.configure_model()
    x, y = torch.randn(2, 3, 224, 224), torch.randint(0, 5, (2, 224, 224))
    out = module.training_step((x, y, {}))
    assert torch.isfinite(out["loss"]) and out["predictions"].shape == (2, 5, 224, 224)
    assert not any(p.requires_grad for p in module.encoder.parameters())


def test_missing_data_is_reported_per_task(tmp_path):
    from mint.eva import run

    emb = tmp_path / "emb" / "mhist"
    opts = R.RenderOptions(
        task="mhist",
        model="tiny-vit",
        model_name="tiny-vit",
        stage="predict",
        output_root="",
        embeddings_root=str(emb),
        data_root=str(tmp_path / "data"),
    )
    with pytest.raises(MintError, match="eva task mhist: data missing"):
        run.predict(opts, emb, on_missing="error")
    assert not emb.exists()
    status = run.predict(opts, emb, on_missing="skip")
    assert status["status"] == "missing_data" and "MHIST" in status["message"]
    out = tmp_path / "results" / "tiny-vit" / "mhist"
    status = run.fit(opts, tmp_path / "runs", out)
    assert status["status"] == "missing_data"
    assert json.loads((out / "status.json").read_text())["status"] == "missing_data"
    assert not (out / "results.json").exists()
    seg = R.RenderOptions(
        task="consep",
        model="tiny-vit",
        model_name="tiny-vit",
        stage="fit",
        output_root="",
        data_root=str(tmp_path / "data"),
    )
    assert run.fit(seg, tmp_path / "runs2", tmp_path / "r2")["status"] == "missing_data"
    # with download allowed, a task eva can fetch is not reported missing
    crc = TASKS["crc"]
    from mint.eva.tasks import missing_data

    assert missing_data(crc, tmp_path / "nothing", download=True) is None
    assert "eva.download is off" in missing_data(crc, tmp_path / "nothing", download=False)


def _eva_results(path: Path, split_metrics: dict[str, dict[str, list[float]]]) -> Path:
    """A results.json in eva's format (as eva's SessionRecorder writes it)."""
    metrics = {"val": [], "test": []}
    for split, named in split_metrics.items():
        metrics[split] = [
            {
                f"{split}/{m}": {"mean": sum(v) / len(v), "stdev": 0.0, "values": v}
                for m, v in named.items()
            }
        ]
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"metrics": metrics}))
    return path / "results.json"


def test_collect_and_summary(tmp_path):
    from mint.eva.run import collect
    from mint.eva.summary import load_leaderboard, write_summary

    inputs = []
    for model, base in (("base", 0.5), ("mint", 0.7)):
        for task, metric, splits in (
            ("bach", "MulticlassAccuracy", ("val",)),
            ("crc", "MulticlassAccuracy", ("val",)),
            ("patch_camelyon", "BinaryBalancedAccuracy", ("val", "test")),
            ("consep", "MonaiDiceScore", ("val",)),
        ):
            run_root = tmp_path / "runs" / model / task
            vals = {s: {metric: [base + (0.2 if s == "test" else 0.0)]} for s in splits}
            _eva_results(
                run_root / "20250101-000000000000_aaaa", {s: {metric: [0.0]} for s in splits}
            )
            _eva_results(run_root / "20250102-000000000000_bbbb", vals)  # newest session wins
            status = collect(task, model, run_root, tmp_path / "eva" / model / task)
            assert status["status"] == "ok"
            inputs.append(tmp_path / "eva" / model / task / "status.json")
        missing = tmp_path / "eva" / model / "mhist"
        missing.mkdir(parents=True)
        (missing / "status.json").write_text(
            json.dumps({"status": "missing_data", "task": "mhist", "model": model, "message": "x"})
        )
        inputs.append(missing / "status.json")
    copied = json.loads((tmp_path / "eva" / "base" / "crc" / "results.json").read_text())
    assert copied["metrics"]["val"][0]["val/MulticlassAccuracy"]["mean"] == 0.5

    out = tmp_path / "summary.csv"
    wide = write_summary(inputs, out, tmp_path / "long.csv").set_index("model")
    assert list(wide.columns[:5]) == ["bach", "crc", "mhist", "patch_camelyon", "consep"]
    assert wide.loc["base", "patch_camelyon"] == pytest.approx(0.7)  # test split, not val
    # average: crc, patch_camelyon, consep (BACH excluded, mhist missing)
    assert wide.loc["mint", "average"] == pytest.approx((0.7 + 0.9 + 0.7) / 3)
    assert wide.loc["mint", "n_tasks"] == 3
    assert "missing data: mhist" in wide.loc["mint", "note"]
    assert out.read_text().startswith("model,bach,crc,mhist")

    board = load_leaderboard().set_index("model")
    assert board.loc["paige_virchow2", "average"] == pytest.approx(0.798, abs=1e-3)
    assert board.loc["mahmood_uni2_h", "average"] == pytest.approx(0.795, abs=1e-3)
    assert board.loc["paige_virchow2", "patch_camelyon"] == pytest.approx(0.938)


def test_make_synthetic_and_dataset(tmp_path):
    from mint.eva.dataset import SyntheticTissuePatches
    from mint.eva.synthetic import make_synthetic
    from mint.synth.morphology import VARIANTS

    root = tmp_path / "synthetic"
    manifest = make_synthetic(root, patches_per_class=2, seed=3, size_px=32)
    assert manifest["classes"] == list(VARIANTS)
    first = (root / "train" / manifest["folders"][0] / "00000.png").read_bytes()
    make_synthetic(tmp_path / "again", patches_per_class=2, seed=3, size_px=32)
    assert (
        tmp_path / "again" / "train" / manifest["folders"][0] / "00000.png"
    ).read_bytes() == first
    names = set()
    for split in ("train", "val", "test"):
        ds = SyntheticTissuePatches(str(root), split)
        ds.prepare_data()
        ds.setup()  # eva's configure + validate
        assert len(ds) == 2 * len(VARIANTS)
        image, target, _ = ds[len(ds) - 1]
        assert image.shape == (3, 32, 32) and int(target) == len(VARIANTS) - 1
        names |= {ds.filename(i) for i in range(len(ds))}
    assert len(names) == 3 * 2 * len(VARIANTS)  # unique across splits (embeddings file names)
    (root / "val" / manifest["folders"][1] / "00001.png").unlink()
    ds = SyntheticTissuePatches(str(root), "val")
    with pytest.raises(ValueError, match="records"):
        ds.setup()


def test_auto_embedding_is_how_evas_leaderboard_ran_the_backbone(mint_model_dir):
    """`auto` = eva's leaderboard: its backbone registry returns CLS for every pathology model
    (Virchow2's `include_patch_tokens` defaults to False; the replication guide uses 1280
    features). `authors` = the model card (Virchow2: CLS ++ patch mean)."""
    from mint.eva.cli import resolve_embedding

    assert resolve_embedding("virchow2", "auto") == "cls"
    assert resolve_embedding("virchow2", "authors") == "cls+patch_mean"
    for name in ("uni", "uni2-h", "h-optimus-0", "h-optimus-1", "gigapath", "tiny-vit"):
        assert resolve_embedding(name, "auto") == "cls"
        assert resolve_embedding(name, "authors") == "cls"
    assert resolve_embedding("virchow2", "cls+st") == "cls+st"
    # a MINT model: EVA reads its CLS token by default
    assert resolve_embedding(str(mint_model_dir), "auto") == "cls"
    assert resolve_embedding(str(mint_model_dir), "authors") == "cls"


def test_segmentation_maps_are_taken_before_the_final_norm():
    """eva's timm encoder (`features_only`, out_indices 1) returns the last block's patch tokens
    before the final norm, registers dropped, as NCHW."""
    import copy

    from mint.eva.backbone import MintBackbone

    seg = MintBackbone("tiny-vit", segmentation=True)
    vit = copy.deepcopy(seg.encoder.backbone.vit)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        got = seg(x)
        ref = vit.forward_intermediates(x, indices=1, norm=False, intermediates_only=True)
    assert len(got) == 1 and got[0].shape == ref[0].shape == (2, 64, 14, 14)
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-5)
