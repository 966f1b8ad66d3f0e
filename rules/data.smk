# Data stage: synthetic raw datasets (when no real root is configured) -> ViLT Arrow -> tokenizer.
# Each stage gets its config.yaml block as one --config JSON (its settings model, validated here and again
# by the stage); paths travel as flags, quoted so that a path with a space stays one argument.
from vlmerge.prepare.config import PrepareSettings
from vlmerge.runtime.settings import build as build_settings
from vlmerge.synth.config import SynthSettings
from vlmerge.vocab.config import TokenizerSettings


def synth_settings(wildcards):
    """data.synthetic for the datasets without a real root (data.raw decides them, so they are added here)."""
    block = {**config["data"]["synthetic"], "datasets": paths.synthetic_datasets()}
    return build_settings(SynthSettings, block, "data.synthetic").as_json()


def prepare_settings(wildcards):
    """data.prepare; the same for every dataset, so a changed value reconverts all of them."""
    return build_settings(PrepareSettings, config["data"]["prepare"], "data.prepare").as_json()


def tokenizer_settings(wildcards):
    """data.tokenizer, bert_vocab included: a vocabulary outside the DAG, named by the config."""
    return build_settings(TokenizerSettings, config["data"]["tokenizer"], "data.tokenizer").as_json()


rule synth:
    input:
        code=stage_code("synth"),
    output:
        paths.synth_record,
    params:
        out=parent_of_output,
        config=synth_settings,
    log:
        paths.log("synth.log"),
    conda:
        ENV
    shell:
        "python -m vlmerge.synth --out {params.out:q} --config {params.config:q} > {log:q} 2>&1"


rule prepare:
    input:
        raw=paths.raw_input,
        code=stage_code("prepare"),
    output:
        paths.manifest("{dataset}"),
    params:
        raw=paths.raw_root,
        out=parent_of_output,
        config=prepare_settings,
    wildcard_constraints:
        dataset="|".join(paths.all_datasets),
    log:
        paths.log("prepare/{dataset}.log"),
    conda:
        ENV
    shell:
        "python -m vlmerge.prepare --dataset {wildcards.dataset} --raw {params.raw:q} --out {params.out:q}"
        " --config {params.config:q} > {log:q} 2>&1"


rule vocab:
    input:
        manifests=[paths.manifest(d) for d in config["data"]["datasets"]],
        code=stage_code("vocab"),
    output:
        directory(paths.tokenizer_dir),
    params:
        arrow=lambda wildcards, input: Path(input.manifests[0]).parent,
        config=tokenizer_settings,
    log:
        paths.log("vocab.log"),
    conda:
        ENV
    shell:
        "python -m vlmerge.vocab --arrow {params.arrow:q} --out {output:q} --config {params.config:q} > {log:q} 2>&1"
