# MINT: fine-tune a pathology foundation model with HEST-1k spatial transcriptomics,
# then compare it with its base model on HEST-Bench and kaiko-eva.
#
#   snakemake --cores 2 --configfile config/demo.yaml          # the synthetic demo, CPU
#   snakemake --profile workflow/profiles/slurm --configfile config/config.yaml
import os

from snakemake.utils import min_version, validate

from mint.config import check_config

min_version("9.0")


# Without --configfile, run the embedded demo. A config file given on the command line
# replaces it entirely (merging would leak demo settings into a real run).
if not config:

    configfile: os.path.join(workflow.basedir, "config", "demo.yaml")


# One readable line for a typo or a wrong type, then Snakemake's validation fills the defaults.
check_config(
    config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")
)
validate(config, "workflow/schemas/config.schema.yaml")


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


rule all:
    default_target: True
    input:
        "results/report/index.html",
