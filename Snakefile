# MINT: fine-tune a pathology foundation model with HEST-1k spatial transcriptomics,
# then compare it with its base model on HEST-Bench and kaiko-eva.
#
#   snakemake --cores 2 --configfile config/demo.yaml          # the synthetic demo, CPU
#   snakemake --profile workflow/profiles/slurm --configfile config/config.yaml
import os
import signal
import sys
import threading

from snakemake.utils import min_version, validate

from mint.config import check_config, check_open_sections
from mint.errors import MintError

min_version("9.0")


# Without --configfile, run the embedded demo. A config file given on the command line
# replaces it entirely (merging would leak demo settings into a real run).
if not config:

    configfile: os.path.join(workflow.basedir, "config", "demo.yaml")


# A typo or a wrong value anywhere in the config stops here as one line naming the key (no
# traceback): the schema's keys and types, Snakemake's validation (which fills the defaults),
# then the open sections (train.defaults, train.runs, pretrain.params, eva.overrides) through
# the jobs' own parsers. See mint/config.py.
try:
    check_config(
        config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")
    )
    validate(config, "workflow/schemas/config.schema.yaml")
    check_open_sections(config)
except MintError as exc:
    sys.exit(str(exc))


# SLURM sends SIGUSR1 (--signal=USR1@600, before the time limit) to every process of the job
# step, this Snakemake included; by default it would exit at once (138) and take the training
# with it. Ignored here, the signal is also ignored by the job's shell (bash keeps a disposition
# it inherited as ignored); `mint train` and its torchrun launcher install their own handlers and
# checkpoint. Only this process's disposition changes; it is not a config value.
if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/tile.smk"
include: "workflow/rules/shards.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/eva.smk"
include: "workflow/rules/drift.smk"
include: "workflow/rules/report.smk"


# Quick jobs that read a few small files: run by Snakemake itself, never submitted to SLURM.
localrules:
    all,
    select,
    bench,
    eva,
    download,
    download_bench,
    tile,
    train,


rule all:
    default_target: True
    input:
        "results/report/index.html",
