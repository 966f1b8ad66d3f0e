# vlmerge: merging modality-specific vision-language transformers (Sung et al., EMNLP Findings 2023).
# Stages are rules in rules/; each calls `python -m vlmerge.<stage>`. See README.md.
import sys

from snakemake.utils import min_version

min_version("8.0")
sys.path.insert(0, workflow.basedir)

from vlmerge.errors import ConfigError
from workflow.config import check_external, validated


configfile: "config.yaml"


# Typed once (workflow/config.py): a bad value or unknown key, or a missing file or folder the config names
# outside the workflow, stops here with one line naming the key.
try:
    config.update(validated(config))
    check_external(config)
except ConfigError as err:
    sys.exit(f"vlmerge: bad configuration: {err}")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/pretrain.smk"
include: "rules/merge.smk"
include: "rules/finetune.smk"
include: "rules/zeroshot.smk"
include: "rules/report.smk"
include: "rules/released.smk"


rule all:
    default_target: True
    input:
        data_targets(),
        pretrain_targets(),
        merge_targets(),
        result_targets(),
        zeroshot.results(),
        report_targets(),


# Named stage targets: `snakemake data`, `snakemake pretrained`, `snakemake merges`, `snakemake results`,
# `snakemake zeroshot` (zero-shot retrieval of every method), `snakemake tables` (the report rule itself) and
# `snakemake ablations` (report.ablations' results); `snakemake released` (the released checkpoints' results).
rule data:
    input:
        data_targets(),


rule pretrained:
    input:
        pretrain_targets(),


rule merges:
    input:
        merge_targets(),


rule results:
    input:
        result_targets(),


rule zeroshot:
    input:
        zeroshot.results(switch=False),


rule ablations:
    input:
        ablation_targets(),


# Its input is a function: the released files are read only when this target is asked for (docs/released.md).
rule released:
    input:
        lambda wildcards: merging.released.targets(),
