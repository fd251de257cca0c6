"""What a config or metadata value can do to the workflow: nothing but be a value.

Shell lines quote every config value (shlex), ids that become paths are checked at parse time,
and the open-ended config sections (training hyperparameters, eva overrides, backbone names) are
checked at parse time by the jobs' own parsers, so a mistake stops the run before any job.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from helpers import REPO, run_snakemake, snakemake_env


def _config(tmp_path, base="demo.yaml", **sections):
    cfg = yaml.safe_load((REPO / "config" / base).read_text())
    for key, value in sections.items():
        node = cfg
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------ 13.1: quoted shell values


def test_paths_with_quote_space_and_command_substitution_stay_literal(tmp_path):
    """A HEST folder and metadata CSV under `it's a $(touch PWNED) dir`: the download job reads
    them as the literal path and no command runs."""
    weird = tmp_path / "it's a $(touch PWNED) dir"
    subprocess.run(
        [sys.executable, "-m", "mint.cli", "synth", "--out", str(weird), "--samples", "SYNV000"],
        check=True,
        env=snakemake_env(),
        capture_output=True,
    )
    work = tmp_path / "work"
    work.mkdir()
    cfg = _config(
        tmp_path,
        hest__source="local",
        hest__local_dir=str(weird),
        hest__metadata_csv=str(weird / "HEST_metadata.csv"),
    )
    run_snakemake(
        ["resources/hest/st/SYNV000.h5ad", "--cores", "1", "--configfile", str(cfg)], work
    )
    linked = work / "resources/hest/st/SYNV000.h5ad"
    assert linked.resolve() == (weird / "st/SYNV000.h5ad").resolve()
    assert not list(tmp_path.rglob("PWNED")) and not (REPO / "PWNED").exists()


def test_a_model_spec_with_shell_syntax_is_one_word(tmp_path):
    """The backbone spec of a timm model with a local checkpoint path reaches `mint embed` as
    one argument, printed quoted in the plan."""
    ckpt = "/ckpt/it's $(touch PWNED).safetensors"
    cfg = _config(tmp_path, extra_models=[f"timm:vit_small_patch16_224@{ckpt}"])
    proc = run_snakemake(["bench", "-n", "-p", "--cores", "1", "--configfile", str(cfg)], tmp_path)
    import shlex

    lines = [ln for ln in proc.stdout.splitlines() if " embed --model 'timm:" in ln]
    assert lines, proc.stdout[-2000:]
    words = shlex.split(lines[0].split("2>")[0])
    assert words[words.index("--model") + 1] == f"timm:vit_small_patch16_224@{ckpt}"


# ------------------------------------------------------------------ 13.2: safe names, parse time


def test_unsafe_sample_id_in_metadata_is_refused_naming_file_and_row(tmp_path):
    import pandas as pd

    csv = tmp_path / "meta.csv"
    df = pd.read_csv(REPO / "config/hest/HEST_v1_1_0.csv")
    df.loc[3, "id"] = "../../../ESCAPED"
    df.to_csv(csv, index=False)
    cfg = _config(tmp_path, "config.yaml", hest__metadata_csv=str(csv))
    proc = run_snakemake(["download", "-n", "--configfile", str(cfg)], tmp_path, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"{csv} line 5: sample id '../../../ESCAPED' is not a safe name" in out, out[-2000:]
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("train__runs", {"../../../../X": {}}, "'../../../../X'"),
        ("select__include", ["a b"], "config 'select.include': sample id 'a b'"),
        ("extra_models", ["not-a-model"], "config 'extra_models': backbone 'not-a-model'"),
        ("base_model", "timm:no_such_arch", "config 'base_model': backbone 'timm:no_such_arch'"),
    ],
)
def test_unsafe_or_unknown_names_fail_at_parse_time(tmp_path, key, value, needle):
    cfg = _config(tmp_path, **{key: value})
    proc = run_snakemake(["-n", "--configfile", str(cfg)], tmp_path, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert needle in out, out[-2000:]
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------ 7: typed config at parse time


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("train__defaults__steps", "ten", "config 'train.defaults': steps must be an integer"),
        ("train__runs", {"mint": {"lr": -1.0}}, "config 'train.runs.mint': lr must be >= 0"),
        ("eva__overrides__n_runs", "two", "config 'eva.overrides.n_runs': 'two' is not an"),
        ("eva__overrides__lr", "fast", "config 'eva.overrides.lr': 'fast' is not a number"),
        ("pretrain__params__w_visium", 1.0, "config 'pretrain.params': w_visium are fixed"),
    ],
)
def test_training_and_eva_settings_are_checked_at_parse_time(tmp_path, key, value, needle):
    cfg = _config(tmp_path, **{key: value})
    proc = run_snakemake(["-n", "--configfile", str(cfg)], tmp_path, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert needle in out, out[-2000:]


@pytest.mark.parametrize(
    "key,value,path",
    [
        ("trian", {}, "trian"),
        ("tile__min_tisue_fraction", 0.2, "tile.min_tisue_fraction"),
        ("cluster__max_mem", 1000, "cluster.max_mem"),
        ("train__defaults__stepz", 10, "train.defaults.stepz"),
        ("train__runs", {"mint": {"lrr": 0.1}}, "train.runs.mint.lrr"),
        ("train__runs", {"mint": {}, "b": {"w_dinno": 0}}, "train.runs.b.w_dinno"),
        ("pretrain__params__stepz", 10, "pretrain.params.stepz"),
        ("eva__overrides__max_stepz", 5, "eva.overrides.max_stepz"),
    ],
)
def test_a_typo_anywhere_is_one_line_naming_the_key(tmp_path, key, value, path):
    """Issue 15: a misspelt key at any depth (a section, a train run, eva's overrides) stops
    the dry run with exactly one line, which names the key by its full dotted path."""
    cfg = _config(tmp_path, **{key: value})
    proc = run_snakemake(["-n", "--configfile", str(cfg)], tmp_path, check=False)
    assert proc.returncode != 0
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"config '{path}': unknown key (known here: "), lines[0]


def test_a_renamed_training_key_gets_its_new_name_not_unknown_key(tmp_path):
    """A former TrainConfig name counts as known at parse time, so the user reads the training
    parser's hint (the new name) instead of a bare "unknown key"."""
    cfg = _config(tmp_path, train__defaults__teacher_temp=0.04)
    proc = run_snakemake(["-n", "--configfile", str(cfg)], tmp_path, check=False)
    assert proc.returncode != 0
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "teacher_temp was renamed teacher_temp_start" in lines[0], lines[0]


def test_config_on_the_command_line_is_coerced_or_refused_naming_the_key(tmp_path):
    """`--config` values arrive as strings: a number is read as a number (the plan shows it in
    the training parameters); a value that is not one is refused, naming the key."""
    demo = ["-n", "-p", "--configfile", str(REPO / "config/demo.yaml")]
    proc = run_snakemake([*demo, "--config", "train={defaults: {lr: 0.0003}}"], tmp_path)
    assert '"lr": 0.0003' in proc.stdout
    proc = run_snakemake([*demo, "--config", "train={defaults: {lr: fast}}"], tmp_path, check=False)
    assert proc.returncode != 0
    assert "config 'train.defaults': lr must be a number" in proc.stdout + proc.stderr
