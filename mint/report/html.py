"""`mint report`: one self-contained HTML page comparing the base model with MINT runs.

The page must open offline on a laptop after being copied off the cluster, so every figure is
a PNG embedded as base64 and there is no JavaScript or external stylesheet. The same PNGs are
written to a folder so `snakemake --report` can list them too.
"""

from __future__ import annotations

import argparse
import html
import logging
from dataclasses import dataclass
from pathlib import Path

from mint.errors import MintError
from mint.io import atomic_dir, atomic_path
from mint.report.blocks import Figure, Section
from mint.report.sections import (
    ablation_section,
    bench_section,
    eva_section,
    examples_section,
    provenance_section,
    selection_section,
    shards_qc_section,
)
from mint.report.training import training_section

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- page

CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1150px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { border-bottom: 2px solid #6a3d9a; padding-bottom: .3em; }
h2 { margin-top: 2em; color: #6a3d9a; }
table.data { border-collapse: collapse; font-size: 0.85em; margin: .5em 0 1.2em; }
table.data th, table.data td { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right; }
table.data th { background: #f3eff8; }
table.data td:first-child, table.data th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
p.caption { font-weight: bold; margin-bottom: .2em; }
nav a { margin-right: 1em; }
p.warning { color: #b00; font-weight: bold; }
table.provenance th { text-align: left; }
"""


def render_page(title: str, intro: str, sections: list[Section]) -> str:
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>\n'
        + "\n".join(s.blocks)
        + "</section>"
        for s in sections
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'/>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{intro}</p><nav>{nav}</nav>{body}</body></html>\n"
    )


def read_pretrain_record(checkpoint: str) -> dict | None:
    """The pretrain stage's record (`<checkpoint stem>.json`: tiles, seconds, metrics path)."""
    from mint.report.ablation import read_json_or_none

    return read_json_or_none(Path(checkpoint).with_suffix(".json"))


def build_report(args: argparse.Namespace) -> tuple[str, list[Figure]]:
    runs = list(args.runs or [])
    if len(runs) != len(args.metrics or []):
        raise MintError(
            f"--runs ({len(runs)}) and --metrics ({len(args.metrics or [])}) differ in length"
        )
    sections: list[Section] = []
    figures: list[Figure] = []
    drift = list(args.drift or [])
    if drift and len(drift) != len(runs):
        raise MintError(f"--runs ({len(runs)}) and --drift ({len(drift)}) differ in length")
    pretrain_metrics = None
    if args.pretrain:
        rec = read_pretrain_record(args.pretrain)
        pretrain_metrics = rec.get("metrics") if rec else None
    for sec, figs in [
        ablation_section(args.bench_results or [], args.eva, drift, args.metrics, args.base, runs),
        bench_section(args.bench, args.base, runs),
        *([eva_section(args.eva, args.base, runs)] if args.eva else []),
        training_section(args.metrics, runs, pretrain_metrics)
        if runs
        else (Section("Training curves", "training", ["<p>No runs.</p>"]), []),
        selection_section(args.samples, args.leakage),
        (shards_qc_section(args.shards), []),
        examples_section(
            args.shards, args.example_wsi, args.example_st, args.metadata, args.n_example_tiles
        ),
    ]:
        sections.append(sec)
        figures.extend(figs)
    sections.append(provenance_section(args.config_hash, args.pretrain))
    intro = (
        f"Base model <b>{html.escape(args.base)}</b> versus MINT run(s) "
        f"<b>{html.escape(', '.join(runs) or 'none')}</b>."
    )
    return render_page("MINT report", intro, sections), figures


@dataclass(frozen=True)
class ReportSettings:
    """`mint report` options and their defaults; config `report:` maps onto them (mint.settings)."""

    n_example_tiles: int = 6


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mint.settings import add_options

    p.add_argument("--samples", required=True, help="results/samples.tsv")
    p.add_argument("--leakage", required=True, help="results/leakage.tsv")
    p.add_argument("--bench", required=True, help="results/bench/summary.csv")
    p.add_argument("--eva", help="results/eva/summary.csv (omit when eva is disabled)")
    p.add_argument(
        "--metrics", nargs="*", default=[], help="metrics.csv of each run, in --runs order"
    )
    p.add_argument("--runs", nargs="*", default=[], help="training run names")
    p.add_argument("--base", required=True, help="model key of the base backbone")
    p.add_argument("--shards", required=True, help="results/shards (example tiles)")
    p.add_argument("--example-wsi", required=True, help="a slide to draw with its spots")
    p.add_argument("--example-st", required=True, help="that slide's st/{id}.h5ad")
    p.add_argument("--metadata", required=True, help="HEST metadata CSV (pixel sizes)")
    add_options(p, "report")  # --n-example-tiles
    p.add_argument(
        "--bench-results",
        nargs="*",
        default=[],
        help="results/bench/{model}/{task}.json (fold std, per-gene r)",
    )
    p.add_argument("--drift", nargs="*", default=[], help="drift.json of each run, in --runs order")
    p.add_argument("--pretrain", help="the demo's pretrained base checkpoint (pretrain stage)")
    p.add_argument("--config-hash", help="hash of the resolved workflow config (provenance)")
    p.add_argument("--out", required=True, help="results/report/index.html")
    p.add_argument("--figures-dir", help="also write each figure as PNG here")


def run(args: argparse.Namespace) -> int:
    page, figures = build_report(args)
    if args.figures_dir:
        with atomic_dir(args.figures_dir) as tmp:
            for f in figures:
                (tmp / f"{f.name}.png").write_bytes(f.png)
    with atomic_path(args.out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    log.info("wrote %s with %d figures", args.out, len(figures))
    return 0
