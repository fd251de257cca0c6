"""Stage settings: one table per `mint` verb from the workflow's config keys to CLI flags.

Each stage's defaults live in one place, the stage's settings dataclass (`TileConfig`,
`ShardSettings`, `EmbedConfig`, ..., named by `Stage.defaults`); the tables below only say which
config key becomes which flag and field, and never repeat a default. Three views are derived:

- the rules' command lines: `stage_opts("tile", config["tile"])` writes the flags, each value
  one shell word (`shlex.quote`), so no config value can become shell syntax;
- the CLI: `add_options(parser, "tile")` adds the options with the dataclass's defaults, and
  `from_args("tile", args)` builds the dataclass back;
- the schema (workflow/schemas/config.schema.yaml) keeps its own `default:` lines because a
  user reads them there; tests/test_config.py parses each verb's flags for the schema's
  defaults and fails on any default that differs from the CLI's, unless the option declares
  the difference here (`workflow=`, with the reason in `why`).

`eva` has no `Stage.defaults`: its options belong to `mint eva`'s sub-commands (render,
predict, fit), each with its own parser; the same test ties them to the schema.

The strings `stage_opts` writes are, flag for flag, the ones the rules wrote by hand before:
Snakemake reruns a finished job when its params or shell text change, so a different spelling
would rerun tiling and training on every existing workspace.

Importing this module is cheap (no numpy): the Snakefile imports it at every parse.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import shlex
from collections.abc import Iterable
from typing import Any

_SAME = object()


def q(value: Any) -> str:
    """One shell word for any value (shlex.quote): `$(...)`, quotes and spaces stay literal."""
    return shlex.quote(str(value))


def opt(flag: str, value: Any) -> str:
    """`--flag 'value'` (a list gives several quoted words); empty for None."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return f"{flag} " + " ".join(q(v) for v in value)
    return f"{flag} {q(value)}"


def opts(*parts: str) -> str:
    """The non-empty parts, joined by single spaces."""
    return " ".join(p for p in parts if p)


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting of a stage: config key, CLI flag(s) and the dataclass field it fills."""

    key: str | None  # key in the stage's config section (None: a CLI-only option)
    flag: str = ""  # `--flag value`; for a boolean: given when the config value is true
    field: str = ""  # dataclass field and argparse dest (default: the key)
    off_flag: str = ""  # boolean: the flag given when the config value is false
    invert: bool = False  # boolean: the field is the negation of the config value
    none_flag: str = ""  # given instead of `flag` when the value is None (`--no-pca`)
    keep_empty: bool = False  # an empty list is a bare flag (where the CLI default is not empty)
    nargs: str = "*"  # for list values
    type: Any = None  # argparse type when the default is None
    choices: tuple = ()
    encode: str = ""  # "json": the value is passed as one JSON word (sorted keys)
    resource: bool = False  # passed by the rule as {threads} / {resources.x}, not by stage_opts
    workflow: Any = _SAME  # the schema's default where it differs on purpose from the CLI's
    why: str = ""  # the reason for `workflow`
    help: str = ""

    @property
    def dest(self) -> str:
        return self.field or self.key or ""

    @property
    def workflow_differs(self) -> bool:
        """True where the schema's default differs on purpose from the CLI's (see `why`)."""
        return self.workflow is not _SAME


@dataclasses.dataclass(frozen=True)
class Stage:
    """The settings of one `mint` verb that the workflow passes from one config section."""

    section: str  # config section
    options: tuple[Option, ...]
    defaults: str = ""  # "module:Class", the dataclass whose field defaults are the truth


STAGES: dict[str, Stage] = {
    "synth": Stage(
        "synthetic",
        (
            # every `mint synth` call of one run must get the same values (the samples, the
            # metadata and the bench tasks are pure functions of them)
            Option("seed", "--seed", help="dataset seed (same in every call of a run)"),
            Option("n_visium", "--n-visium", help="Visium samples"),
            Option("n_st", "--n-st", help="legacy ST samples"),
            Option("n_xenium", "--n-xenium", help="Xenium samples"),
            Option(
                "slide_size_um",
                "--slide-size-um",
                help="slide width, um (Xenium and bench slides: half)",
            ),
            Option("n_genes", "--n-genes", help="genes in the synthetic panel (>= 60)"),
        ),
        "mint.synth.specs:SynthConfig",
    ),
    "download": Stage(
        "hest",
        (
            Option("repo_id", "--repo-id", help="hub dataset repository"),
            Option("retries", "--retries", help="download attempts (source hub)"),
            Option(
                "local_dir", "--local-dir", type=str, help="existing HEST folder (source local)"
            ),
            Option("copy", "--copy", help="copy instead of symlink (source local)"),
        ),
        "mint.hest.download:DownloadSettings",
    ),
    "download-bench": Stage(
        "bench_data",
        (
            Option("repo_id", "--repo-id", help="hub dataset repository"),
            Option(
                "local_dir",
                "--local-dir",
                type=str,
                help="existing hest-bench folder (source local)",
            ),
            Option(None, "--copy", field="copy", help="copy instead of symlink (source local)"),
            Option(None, "--retries", field="retries", help="download attempts (source hub)"),
        ),
        "mint.hest.download_bench:BenchDownloadSettings",
    ),
    "select": Stage(
        "select",
        (
            Option("species", "--species", keep_empty=True, help="species to keep (none = all)"),
            Option(
                "technologies",
                "--technologies",
                help="st_technology values (Visium, ST, Xenium, 'Visium HD')",
            ),
            Option("organs", "--organs", help="organs to keep (none = all)"),
            Option("include", "--include", help="sample ids always kept"),
            Option("exclude", "--exclude", help="sample ids always removed"),
            Option(
                "exclude_bench",
                off_flag="--no-exclude-bench",
                help="keep HEST-Bench samples in training",
            ),
            Option(
                "exclude_leakage",
                "--exclude-leakage",
                help="also remove samples listed in the leakage report",
            ),
            Option(
                "exclude_visium_hd",
                "--exclude-visium-hd",
                help="leave Visium HD samples out (their released counts may be unpooled)",
            ),
            Option(
                "max_samples",
                "--max-samples",
                type=int,
                help="keep at most N samples (first by id)",
            ),
        ),
        "mint.hest.select:SelectionConfig",
    ),
    "tile": Stage(
        "tile",
        (
            Option("patch_size_px", "--patch-size", field="patch_size", help="patch side, px"),
            Option("pixel_size_um", "--pixel-size", help="patch resolution, um/px"),
            Option(
                "min_tissue_fraction",
                "--min-tissue",
                field="min_tissue",
                help="minimum tissue fraction",
            ),
            Option("xenium_target", "--xenium-target", choices=("cells", "transcripts")),
            Option("min_qv", "--min-qv", help="drop transcripts with qv below"),
            Option(
                "drop_controls",
                off_flag="--keep-controls",
                field="keep_controls",
                invert=True,
                help="keep Xenium control codewords",
            ),
            Option(
                "threads",
                "--threads",
                resource=True,
                workflow=2,
                why="a workflow job reads patches with two threads; the CLI alone uses one",
                help="patch reader threads",
            ),
        ),
        "mint.data.tiling:TileConfig",
    ),
    "vocab": Stage(
        "vocab",
        (
            Option("n_top_genes", "--n-top-genes"),
            Option(
                None,
                "--min-sample-fraction",
                field="min_sample_fraction",
                help="HVG candidates must be measured by this fraction of spot-level samples",
            ),
        ),
        "mint.data.vocab:VocabSettings",
    ),
    "shards": Stage(
        "shards",
        (
            Option("samples_per_shard", "--samples-per-shard"),
            Option(
                "val_fraction",
                "--val-fraction",
                help="fraction of the samples of each modality held out whole for validation",
            ),
            Option("seed", "--seed"),
            Option("jpeg_quality", "--jpeg-quality"),
            Option(
                "min_vocab_coverage",
                "--min-vocab-coverage",
                help="fraction of its modality's vocabulary a sample must measure "
                "(0: at least one gene)",
            ),
            Option(
                "exclude_low_coverage",
                "--exclude-low-coverage",
                help="leave samples below --min-vocab-coverage out (listed in qc.tsv) instead "
                "of stopping",
            ),
        ),
        "mint.data.shards:ShardSettings",
    ),
    "pretrain": Stage(
        "pretrain",
        (
            Option("n_tiles", "--n-tiles", help="synthetic tiles to pretrain on"),
            Option("seed", "--seed", help="seed of the tiles (own stream)"),
        ),
        "mint.synth.pretrain:PretrainSettings",
    ),
    "embed": Stage(
        "bench",
        (
            Option("batch_size", "--batch-size", resource=True),
            Option(
                "num_workers",
                "--num-workers",
                resource=True,
                help="DataLoader worker processes",
            ),
            Option(None, "--device", field="device", help="auto (cuda if available), cuda, cpu"),
            Option(
                "precision",
                "--precision",
                choices=("auto", "bf16", "fp16", "fp32"),
                help="autocast dtype on CUDA; auto = as HEST's bench embeds the backbone (UNI, "
                "Virchow2, H-optimus-0: fp16; GigaPath and models outside HEST's zoo: fp32; a "
                "MINT model: its base backbone's); CPU always runs fp32",
            ),
            Option(None, "--overwrite", field="overwrite", help="ignore cached samples"),
        ),
        "mint.bench.embed:EmbedConfig",
    ),
    "probe": Stage(
        "bench",
        (
            Option(
                "variants",
                "--variants",
                nargs="+",
                help="cls, st, patch_mean or '+'-joined concatenations (variants needing st are "
                "skipped for models without an ST token)",
            ),
            Option(
                "pca_components",
                "--pca-components",
                none_flag="--no-pca",
                type=int,
                help="PCA components (--no-pca: ridge on the full embedding, no scaler, no PCA)",
            ),
            Option("seed", "--seed"),
        ),
        "mint.bench.probe:ProbeSettings",
    ),
    "eva": Stage(
        "eva",
        (
            Option("download", "--download", off_flag="--no-download"),
            Option("embedding", "--embedding"),
            Option("accelerator", "--accelerator"),
            Option("overrides", "--overrides", encode="json"),
            Option("num_workers", "--num-workers", resource=True),
        ),
    ),
    "drift": Stage(
        "drift",
        (
            Option("max_patches", "--max-patches"),
            Option(None, "--batch-size", field="batch_size"),
            Option(None, "--seed", field="seed"),
        ),
        "mint.eval.drift:DriftSettings",
    ),
    "report": Stage(
        "report",
        (Option("n_example_tiles", "--n-example-tiles"),),
        "mint.report.html:ReportSettings",
    ),
}


def _words(o: Option, value: Any) -> str:
    if o.encode == "json":
        value = json.dumps(value, sort_keys=True)
    if isinstance(value, bool):
        return o.flag if value else o.off_flag
    if value is None:
        return o.none_flag
    if isinstance(value, (list, tuple)):
        if not value:
            return o.flag if o.keep_empty else ""
        return opt(o.flag, list(value))
    return opt(o.flag, value)


def stage_opts(stage: str, section: dict, keys: Iterable[str] | None = None) -> str:
    """The CLI flags of `stage` for a config section (all its options, or only `keys`), in the
    table's order, each value one quoted shell word. Options the rule passes as a resource
    (`{threads}`, `{resources.batch_size}`) are left out."""
    wanted = None if keys is None else set(keys)
    parts = []
    for o in STAGES[stage].options:
        if o.key is None or o.resource or (wanted is not None and o.key not in wanted):
            continue
        parts.append(_words(o, section[o.key]))
    return opts(*parts)


# ---------------------------------------------------------------------------------- the CLI
def _stage_class(stage: str) -> type:
    """The stage's settings dataclass ("module:Name" in its Stage)."""
    module, name = STAGES[stage].defaults.split(":")
    return getattr(importlib.import_module(module), name)


def stage_defaults(stage: str) -> Any:
    """An instance of the stage's dataclass with every default (the truth for the CLI)."""
    return _stage_class(stage)()


def add_options(parser: argparse.ArgumentParser, stage: str) -> None:
    """Add the stage's options to a verb's parser, with the dataclass's defaults."""
    defaults = stage_defaults(stage)
    for o in STAGES[stage].options:
        default = getattr(defaults, o.dest)
        if isinstance(default, (list, tuple)):
            default = list(default)  # a fresh list per parser, as argparse hands back for a flag
        kw: dict[str, Any] = {"dest": o.dest, "default": default, "help": o.help or None}
        if isinstance(default, bool):
            if o.flag:
                parser.add_argument(o.flag, action="store_const", const=not o.invert, **kw)
            if o.off_flag:
                parser.add_argument(o.off_flag, action="store_const", const=o.invert, **kw)
            continue
        if o.choices:
            kw["choices"] = list(o.choices)
        if isinstance(default, (list, tuple)):
            kw["nargs"] = o.nargs
        else:
            kw["type"] = o.type or type(default)
            if not o.choices:
                kw["metavar"] = o.flag.lstrip("-").upper().replace("-", "_")
        if o.none_flag:
            group = parser.add_mutually_exclusive_group()
            group.add_argument(o.flag, **kw)
            group.add_argument(o.none_flag, action="store_const", const=None, dest=o.dest)
        else:
            parser.add_argument(o.flag, **kw)


def from_args(stage: str, args: argparse.Namespace, **extra: Any) -> Any:
    """The stage's dataclass from parsed options (plus `extra` fields the CLI does not set)."""
    values = {o.dest: getattr(args, o.dest) for o in STAGES[stage].options}
    return _stage_class(stage)(**values, **extra)
