"""The workflow as users run it: parse-time checks, dry-runs of the real run, the SLURM
profile, lint, and the end-to-end demo (DAG to report, then nothing to do)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from helpers import REPO, job_counts, run_snakemake, snakemake_env


def write_config(tmp_path: Path, base: str, **overrides) -> Path:
    cfg = yaml.safe_load((REPO / "config" / base).read_text())
    for key, value in overrides.items():
        section, _, sub = key.partition("__")
        if sub:
            cfg.setdefault(section, {})[sub] = value
        else:
            cfg[section] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# --------------------------------------------------------------------------- parse time


def test_real_download_dry_run_plans_577_samples_offline(tmp_path):
    start = time.monotonic()
    proc = run_snakemake(
        ["download", "-n", "--cores", "2", "--configfile", str(REPO / "config/config.yaml")],
        tmp_path,
    )
    elapsed = time.monotonic() - start
    counts = job_counts(proc.stdout)
    # 533 spot-level samples and 44 Xenium samples (which also fetch their transcripts).
    assert counts.get("download_sample") == 533, counts
    assert counts.get("download_xenium_sample") == 44, counts
    assert elapsed < 30, f"dry-run took {elapsed:.1f}s"


def test_config_typo_fails_at_parse_time_naming_the_key(tmp_path):
    cfg = write_config(tmp_path, "demo.yaml", tile__min_tisue_fraction=0.2)
    proc = run_snakemake(["-n", "--configfile", str(cfg)], tmp_path, check=False)
    assert proc.returncode != 0
    assert "min_tisue_fraction" in proc.stderr + proc.stdout


def test_config_wrong_type_fails_naming_the_key(tmp_path):
    cfg = write_config(tmp_path, "demo.yaml", vocab__n_top_genes="many")
    proc = run_snakemake(["-n", "--configfile", str(cfg)], tmp_path, check=False)
    assert proc.returncode != 0
    out = proc.stderr + proc.stdout
    assert "n_top_genes" in out and "many" in out


def test_unknown_bench_task_is_named(tmp_path):
    cfg = write_config(tmp_path, "demo.yaml", bench_data__tasks=["NOPE"])
    proc = run_snakemake(["-n", "--configfile", str(cfg)], tmp_path, check=False)
    assert proc.returncode != 0
    assert "NOPE" in proc.stderr + proc.stdout


class _Resources(dict):
    """The attribute-and-get access the SLURM plugin uses on `job.resources`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


def planned_jobs(stdout: str, rule: str) -> list[SimpleNamespace]:
    """Jobs of `rule` in a dry-run's output, with their threads and resources."""
    jobs = []
    # jobs of a group (per-sample download + tile) are printed indented under "Group job"
    for block in re.split(r"\n(?=\s*(?:local)?rule \w+:)", stdout):
        if not re.match(rf"\s*(?:local)?rule {rule}:", block):
            continue
        block = re.split(r"\n\[|\n\n", block)[0]
        threads = int(re.search(r"threads: (\d+)", block).group(1)) if "threads:" in block else 1
        res = _Resources()
        line = re.search(r"resources: (.*)", block).group(1)
        for key, value in re.findall(r"(\w+)=([^,]+)", line):
            res[key] = int(value) if value.isdigit() else value
        jobs.append(SimpleNamespace(threads=threads, resources=res))
    return jobs


def sbatch_call(job) -> str:
    """The sbatch command line the SLURM executor plugin builds for a planned job."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    params = {
        "run_uuid": "test",
        "slurm_logfile": "slurm.log",
        "comment_str": "rule",
        "account": f"-A {job.resources.get('slurm_account')}",
        "partition": f"-p {job.resources.get('slurm_partition')}",
        "workdir": "/scratch/run",
    }
    settings = SimpleNamespace(requeue=True, no_requeue=False, qos=None, reservation=None)
    return get_submit_command(job, params, settings) + set_gres_string(job)


def test_slurm_profile_plans_full_real_run_and_submits_profile_resources(tmp_path):
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    # A copy of the profile without the cluster-only executor, so the dry-run needs no sbatch.
    local_profile = tmp_path / "profile"
    local_profile.mkdir()
    prof = dict(profile)
    assert prof.pop("executor") == "slurm"
    assert "--gres" not in str(prof.get("default-resources", "")) + str(prof["set-resources"])
    (local_profile / "config.yaml").write_text(yaml.safe_dump(prof))
    proc = run_snakemake(
        [
            "-n",
            "--profile",
            str(local_profile),
            "--configfile",
            str(REPO / "config/config.yaml"),
            "--printshellcmds",
            # Locally threads are capped at --cores; under the SLURM executor they are not.
            "--cores",
            "64",
        ],
        tmp_path,
    )
    counts = job_counts(proc.stdout)
    assert counts["tile_sample"] == 577
    assert counts["download_sample"] + counts["download_xenium_sample"] == 577
    assert counts["train_run"] == 1
    assert counts["embed"] == counts["probe"] == 2 * 10  # base + mint on ten tasks
    assert counts.get("eva_fit", 0) >= 2 * 8
    real = yaml.safe_load((REPO / "config/config.yaml").read_text())

    # What sbatch gets for each GPU rule: the profile's partition and GPU model, the config's
    # GPU count (the only place it is set), the rule's time limit.
    gpus = {
        "train_run": real["train"]["gpus"],
        "embed": real["bench"]["gpus"],
        "eva_predict": real["eva"]["gpus"],
        "eva_fit_online": real["eva"]["gpus"],
    }
    for rule, n_gpus in gpus.items():
        want = profile["set-resources"][rule]
        jobs = planned_jobs(proc.stdout, rule)
        assert jobs, rule
        call = sbatch_call(jobs[0])
        assert f"--gpus={want['gpu_model']}:{n_gpus}" in call, call
        assert f"--cpus-per-gpu={want['cpus_per_gpu']}" in call, call
        assert "--cpus-per-task" not in call, call
        assert f"-t {jobs[0].resources['runtime']}" in call and "--requeue" in call, call
        assert f"-p {want['slurm_partition']}" in call, call
    train_call = sbatch_call(planned_jobs(proc.stdout, "train_run")[0])
    assert f"--mem {real['train']['mem_mb']}" in train_call
    assert f"-t {real['train']['runtime']}" in train_call
    assert "--signal=USR1@600" in train_call  # checkpoint-and-exit before the time limit
    # Offline eva fits train a head on stored embeddings: no GPU, the CPU partition.
    fits = planned_jobs(proc.stdout, "eva_fit")
    assert len(fits) == 2 * 8
    for job in fits:
        call = sbatch_call(job)
        assert "--gpus" not in call and "gpu" not in call.replace("--gpus", ""), call
        assert f"-p {profile['default-resources']['slurm_partition']}" in call, call
    assert "eva_fit" not in profile["set-resources"]
    # CPU rules get their threads as CPUs.
    tile = planned_jobs(proc.stdout, "tile_sample")[0]
    assert f"--cpus-per-task={profile['set-threads']['tile_sample']}" in sbatch_call(tile)
    # torchrun starts one process per GPU the config gives the training job.
    assert f"--nproc-per-node={real['train']['gpus']}" in proc.stdout
    # Per-sample download + tile jobs are grouped: ceil(577 / 20) group jobs.
    size = int(profile["group-components"][0].split("=")[1])
    assert proc.stdout.count("Group job sample") == -(-577 // size)
    assert "localrules" not in profile  # declared in the Snakefile


def test_profile_cannot_set_the_training_gpu_count(tmp_path):
    """The GPU count has one source (config train.gpus): a profile or --set-resources entry that
    would start torchrun with one count and sbatch with another is a parse-time error."""
    proc = run_snakemake(
        ["train", "-n", "--configfile", str(REPO / "config/config.yaml")]
        + ["--set-resources", "train_run:gpu=8"],
        tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "train_run: gpu is set by the profile or --set-resources" in out, out[-2000:]
    assert "train.gpus" in out


def test_multi_node_layout_is_per_node(tmp_path):
    cfg = write_config(tmp_path, "config.yaml", train__nodes=2, train__gpus=4)
    proc = run_snakemake(["train", "-n", "-p", "--configfile", str(cfg)], tmp_path)
    job = planned_jobs(proc.stdout, "train_run")[0]
    call = sbatch_call(job)
    assert "--gres=gpu:4" in call and "--nodes=2" in call and "--gpus" not in call, call
    assert "--nnodes=2" in proc.stdout and "--nproc-per-node=4" in proc.stdout


def _write_failing_train_workdir(tmp_path: Path, preemptions: int) -> Path:
    """A working dir whose shards index is broken, so every train attempt fails at once."""
    (tmp_path / "results/shards").mkdir(parents=True)
    (tmp_path / "results/shards/index.json").write_text("{broken")
    run_dir = tmp_path / "results/models/mint"
    run_dir.mkdir(parents=True)
    if preemptions:
        (run_dir / "preemptions.log").write_text("SIGUSR1 step=9\n" * preemptions)
    return tmp_path


@pytest.mark.parametrize(
    "preemptions,want",
    [
        # no checkpoint-and-exit recorded: every failure may be memory, doubled up to the cap
        (0, [8000, 16000, 24000]),
        # one attempt stopped on a signal (preemptions.log): that retry gets the same memory
        (1, [8000, 8000, 16000]),
    ],
)
def test_memory_grows_only_for_failures_that_were_not_preemptions(tmp_path, preemptions, want):
    work = _write_failing_train_workdir(tmp_path / "work", preemptions)
    cfg = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    cfg["cluster"] = {"max_mem_mb": 24000}
    cfg["pretrain"]["enabled"] = False  # train_run alone, from the seeded tiny-vit
    cfg["train"]["max_resumes"] = 2  # the train rule's own retry count: 3 attempts
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(
        ["results/models/mint/model.safetensors", "--cores", "1", "--configfile", str(path)]
        + ["--allowed-rules", "train_run"],
        work,
        check=False,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    mems = [int(m) for m in re.findall(r"resources: .*\bmem_mb=(\d+)", out)]
    assert mems == want, out[-3000:]


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="a real cluster: don't submit")
def test_slurm_profile_loads_with_the_slurm_executor(tmp_path):
    """The profile as shipped (executor: slurm) parses and plans; -n submits nothing."""
    proc = run_snakemake(
        [
            "train",
            "-n",
            "--profile",
            str(REPO / "workflow/profiles/slurm"),
            "--configfile",
            str(REPO / "config/config.yaml"),
        ],
        tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert job_counts(proc.stdout).get("train_run") == 1


def test_ablation_runs_are_each_trained_benchmarked_and_reported(tmp_path):
    cfg = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    cfg["train"]["runs"] = {
        "mint": {},
        "mint-no-dino": {"w_dino": 0.0},
        "cls-only": {"st_token": False},
    }
    cfg["extra_models"] = ["timm:vit_small_patch16_224"]
    path = tmp_path / "ablations.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(["-n", "-p", "--cores", "2", "--configfile", str(path)], tmp_path)
    counts = job_counts(proc.stdout)
    assert counts["train_run"] == 3
    n_models = 1 + 1 + 3  # base, extra backbone, three runs
    assert counts["embed"] == counts["probe"] == n_models * 2
    assert counts["eva_fit"] == n_models
    assert counts["report"] == 1
    assert counts["drift_run"] == 3 and counts["pretrain"] == 1
    # every run starts from the pretrained base, loaded as a local checkpoint
    assert '"backbone": "tiny-vit@results/pretrain/tiny-vit.safetensors"' in proc.stdout
    assert "--base tiny-vit-pretrained" in proc.stdout
    assert '"w_dino": 0.0' in proc.stdout and '"st_token": false' in proc.stdout
    runs = re.search(r"--runs ((?:\S+ )+)--base", proc.stdout).group(1).split()
    metrics = re.search(r"--metrics ((?:\S+ )+)--runs", proc.stdout).group(1).split()
    assert sorted(runs) == ["cls-only", "mint", "mint-no-dino"]
    assert metrics == [f"results/models/{r}/metrics.csv" for r in runs]


def test_snakemake_lint_is_clean(tmp_path):
    proc = run_snakemake(
        ["--lint", "--configfile", str(REPO / "config/demo.yaml")], tmp_path, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout, proc.stdout


def test_snakefmt_check():
    snakefmt = Path(sys.executable).parent / "snakefmt"
    proc = subprocess.run(
        [str(snakefmt), "--check", "Snakefile", "workflow/rules"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=snakemake_env(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- end to end


class _PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables = 0
        self.images: list[str] = []
        self.sections: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables += 1
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "section":
            self.sections.append(attrs.get("id", ""))

    def handle_data(self, data):
        self.text.append(data)


@pytest.mark.slow
def test_demo_runs_to_a_self_contained_report(demo_run):
    page = (demo_run / "results/report/index.html").read_text()
    parser = _PageParser()
    parser.feed(page)
    assert {
        "ablations",
        "hest-bench",
        "eva",
        "training",
        "samples",
        "examples",
        "provenance",
    } <= set(parser.sections)
    assert parser.tables >= 6
    assert len(parser.images) >= 5
    for src in parser.images:
        # Self-contained: every image is embedded, nothing is fetched.
        assert src.startswith("data:image/png;base64,") and len(src) > 1000
    text = " ".join(parser.text)
    assert "tiny-vit" in text and "mint" in text
    assert "http://" not in page and "https://" not in page
    figures = sorted(p.name for p in (demo_run / "results/report/figures").glob("*.png"))
    assert "hest_bench.png" in figures and "eva.png" in figures
    assert {"hest_bench_error_bars.png", "training_runs.png", "training_pretrain.png"} <= set(
        figures
    )
    # the ablation table: base plus the four runs, with HEST-Bench, EVA and CKA drift
    for name in ("tiny-vit-pretrained", "mint-no-dino", "mint-no-anchor", "finetune"):
        assert name in text
    for heading in ("Ablation table", "CKA to base", "fold std", "Paired per-gene", "(ours)"):
        assert heading in text, heading
    for key in ("git commit", "config hash", "torch", "timm", "device", "date (UTC)"):
        assert key in text, key


@pytest.mark.slow
def test_demo_drift_and_pretrained_base(demo_run):
    """Every run has drift.json against the pretrained base; the base is a real checkpoint."""
    import json

    from mint.models.backbones import build_backbone

    ckpt = demo_run / "results/pretrain/tiny-vit.safetensors"
    assert ckpt.is_file()
    build_backbone(f"tiny-vit@{ckpt}", pretrained=True)  # loads strictly
    for run in ("mint", "mint-no-dino", "mint-no-anchor", "finetune"):
        rec = json.loads((demo_run / f"results/models/{run}/drift.json").read_text())
        assert 0.0 <= rec["linear_cka"] <= 1.0 + 1e-9 and -1 <= rec["mean_cosine"] <= 1
        assert rec["base"] == "tiny-vit@results/pretrain/tiny-vit.safetensors"
        morph = rec["morphology"]
        assert 0.0 <= morph["run"] <= 1.0 and 0.0 <= morph["base"] <= 1.0


@pytest.mark.slow
def test_second_demo_run_has_nothing_to_do(demo_run):
    proc = run_snakemake(
        ["-n", "--cores", "2", "--configfile", str(REPO / "config/demo.yaml")], demo_run
    )
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout


@pytest.mark.slow
def test_changing_a_training_hyperparameter_reruns_training_and_evaluation_only(demo_run, tmp_path):
    cfg = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    cfg["train"]["defaults"]["lr"] = 1.0e-4
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(["-n", "--cores", "2", "--configfile", str(path)], demo_run)
    counts = job_counts(proc.stdout)
    n_runs = len(cfg["train"]["runs"])
    assert counts.get("train_run") == n_runs
    upstream = {"download_sample", "tile_sample", "vocab", "shards", "select", "synth_metadata"}
    assert not (upstream | {"pretrain"}) & set(counts), counts
    # The base model's evaluations do not depend on training and must not rerun.
    assert counts.get("embed") == n_runs * len(
        [t for t in (demo_run / "resources/hest-bench").iterdir() if t.is_dir()]
    )
    assert counts.get("drift_run") == n_runs


@pytest.mark.slow
def test_demo_runs_learn_expression_on_held_out_slides(demo_run):
    """Every run with expression heads learns the synthetic expression (a function of the tissue
    mix that the morphology shows): its loss on whole held-out slides falls over training, for
    both modalities. (From the DINO-pretrained base, the demo's 100 steps do not beat the base's
    CLS on the synthetic HEST-Bench by more than the fold noise; the report states that
    comparison with fold std and per-gene pairs rather than the test asserting a margin.)"""
    import pandas as pd

    for run in ("mint", "mint-no-dino", "mint-no-anchor", "finetune"):
        df = pd.read_csv(demo_run / f"results/models/{run}/metrics.csv")
        val = df[df["split"] == "val"].sort_values("step")
        assert len(val) >= 2, run
        for term in ("loss_visium", "loss_xenium"):
            first, last = val[term].iloc[0], val[term].iloc[-1]
            assert last < first, (run, term, first, last)
    summary = pd.read_csv(demo_run / "results/bench/summary.csv")
    mint = summary[summary["model"] == "mint"].set_index("variant")
    assert mint.loc[["cls", "st", "cls+st"], "average"].notna().all()


@pytest.mark.slow
def test_demo_eva_results_come_from_eva(demo_run):
    """results.json is eva's own file (copied from its timestamped run folder), and the summary
    holds the headline metric read from it."""
    import json

    import pandas as pd

    summary = pd.read_csv(demo_run / "results/eva/summary.csv").set_index("model")
    assert set(summary.index) == {
        "tiny-vit-pretrained",
        "mint",
        "mint-no-dino",
        "mint-no-anchor",
        "finetune",
    }
    for model in summary.index:
        status = json.loads((demo_run / f"results/eva/{model}/synthetic/status.json").read_text())
        assert status["status"] == "ok"
        copied = demo_run / f"results/eva/{model}/synthetic/results.json"
        original = demo_run / status["source"]
        # eva wrote the original inside its own run root, in a timestamped folder.
        assert original.is_file() and original.parent.parent == (
            demo_run / f"results/eva/runs/{model}/synthetic"
        )
        assert copied.read_bytes() == original.read_bytes()
        metrics = json.loads(copied.read_text())["metrics"]
        split = status["split"]
        entry = next(
            v for d in metrics[split] for k, v in d.items() if k == f"{split}/{status['metric']}"
        )
        assert summary.at[model, "synthetic"] == pytest.approx(entry["mean"], abs=1e-4)
        assert 0.0 <= entry["mean"] <= 1.0


@pytest.mark.slow
def test_demo_training_curves_and_held_out_loss(demo_run):
    import pandas as pd

    m = pd.read_csv(demo_run / "results/models/mint/metrics.csv")
    train = m[m["split"] == "train"]
    for term in ["loss", "loss_visium", "loss_xenium", "loss_dino", "loss_anchor", "lr"]:
        assert train[term].notna().any(), term
    val = m[m["split"] == "val"].sort_values("step")
    first, last = val.iloc[0], val.iloc[-1]
    reg = ["loss_visium", "loss_xenium"]
    assert last[reg].sum() < 0.9 * first[reg].sum(), val[["step", *reg]]


@pytest.mark.slow
def test_snakemake_report_includes_the_figures(demo_run, tmp_path):
    out = tmp_path / "snakemake_report.zip"
    run_snakemake(["--report", str(out), "--configfile", str(REPO / "config/demo.yaml")], demo_run)
    assert out.exists() and out.stat().st_size > 10000


FAKE_SBATCH = """#!/bin/bash
printf '%s\\n' "$*" >> "$FAKE_SLURM_DIR/sbatch.calls"
echo $((1000 + $(wc -l < "$FAKE_SLURM_DIR/sbatch.calls")))
"""
# every submitted job reports FAILED at the first status check, so the run stops after the
# first wave of submissions (what is ready before any job has run)
FAKE_SACCT = """#!/bin/bash
n=$(wc -l < "$FAKE_SLURM_DIR/sbatch.calls" 2>/dev/null || echo 0)
for i in $(seq 1 "$n"); do echo "$((1000 + i))|FAILED"; done
"""
FAKE_OTHERS = {
    "sacctmgr": 'echo "YOUR_ACCOUNT"\n',
    "scontrol": 'echo "MaxArraySize = 1001"; echo "MinJobAge = 300"\n',
    "squeue": "exit 0\n",
    "sinfo": "exit 0\n",
}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="a real cluster: don't submit")
def test_fake_sbatch_submits_groups_and_runs_quick_rules_locally(tmp_path):
    """The shipped profile with the SLURM executor and a fake sbatch on PATH (as the plugin's
    own tests do): the 577 samples' download + tile jobs go out as ceil(577 / 20) group jobs of
    bounded size, `select` runs locally, and only GPU rules ask for GPUs."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {"sbatch": FAKE_SBATCH, "sacct": FAKE_SACCT, **FAKE_OTHERS}.items():
        (bin_dir / name).write_text(body if body.startswith("#!") else "#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    work = tmp_path / "run"
    work.mkdir()
    env = snakemake_env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["FAKE_SLURM_DIR"] = str(tmp_path)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    cmd += ["--profile", str(REPO / "workflow/profiles/slurm")]
    cmd += ["--configfile", str(REPO / "config/config.yaml"), "--retries", "0"]
    cmd += ["--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "1"]
    subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1500)
    calls = (tmp_path / "sbatch.calls").read_text().splitlines()
    first = [c for c in calls if "--attempt 1 " in c]
    groups = [c for c in first if "--comment rule_sample_" in c]
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    size = int(profile["group-components"][0].split("=")[1])
    assert len(groups) == -(-577 // size), len(groups)
    for call in groups:
        assert f"--cpus-per-task={profile['cores']}" in call and "--gpus" not in call, call
    # no global memory limit: the training job keeps its own request
    assert "resources" not in profile
    # quick rules never reach sbatch; select ran here
    assert not [c for c in calls if "--comment rule_select" in c]
    assert (work / "results/samples.tsv").exists()
    # GPUs only for the GPU rules of the first wave
    for call in first:
        gpu_rule = "rule_eva_predict" in call or "rule_eva_fit_online" in call
        assert ("--gpus=" in call) == gpu_rule, call[:400]
