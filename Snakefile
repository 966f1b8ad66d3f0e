# vlmerge: merging modality-specific vision-language transformers (Sung et al., EMNLP Findings 2023).
# Stages are rules in rules/; each calls `python -m vlmerge.<stage>`. See README.md.
from snakemake.utils import min_version, validate

min_version("8.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "rules/common.smk"
include: "rules/data.smk"


rule all:
    default_target: True
    input:
        data_targets(),
