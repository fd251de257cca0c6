"""The `mint` command: one verb per workflow stage.

Each verb lives in the module that implements the stage and exposes two functions:
`add_arguments(parser)` and `run(args) -> int | None`. Modules are imported only when their
verb is called, so `mint --help` and Snakemake jobs that call a light verb do not import torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from mint.errors import MintError, one_line
from mint.logging_utils import setup_logging

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "synth": ("mint.synth.cli", "write a synthetic HEST-1k and HEST-Bench look-alike"),
    "select": ("mint.hest.select", "select training samples from the HEST metadata"),
    "download": ("mint.hest.download", "fetch one HEST-1k sample (hub, local or synthetic)"),
    "download-bench": ("mint.hest.download_bench", "fetch one HEST-Bench task"),
    "tile": ("mint.data.tiling", "cut one sample into 224 px patches with expression targets"),
    "vocab": ("mint.data.vocab", "build the visium and xenium gene vocabularies"),
    "shards": ("mint.data.shards", "write globally shuffled WebDataset shards"),
    "pretrain": ("mint.synth.pretrain", "pretrain the demo's base ViT self-supervised (DINO)"),
    "train": ("mint.train.cli", "MINT fine-tuning (DDP through torchrun)"),
    "embed": ("mint.bench.embed", "embed HEST-Bench patches with a model"),
    "probe": ("mint.bench.probe", "HEST-Bench ridge probe for one model and task"),
    "bench-summary": ("mint.bench.summary", "collect HEST-Bench results into one table"),
    "eva": ("mint.eva.cli", "run kaiko-eva: render configs, predict, fit, collect, summarise"),
    "drift": ("mint.eval.drift", "forgetting: CKA drift and morphology score of a run"),
    "report": ("mint.report.html", "write the HTML report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mint", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb, (module_name, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        # Arguments are added lazily in main() for the chosen verb only.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # First pass: find the verb without importing every stage module.
    verb = next((a for a in argv if a in VERBS), None)
    if verb is not None:
        module = importlib.import_module(VERBS[verb][0])
        sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        module.add_arguments(sub_action.choices[verb])
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    module = importlib.import_module(args._module)
    try:
        rc = module.run(args)
    except MintError as exc:
        # One clear line, no traceback: the message names the sample, file or key.
        print(f"mint {args.verb}: error: {one_line(exc, limit=2000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        logging.getLogger("mint").error("interrupted")
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
