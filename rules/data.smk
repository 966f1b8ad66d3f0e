# Data stage: synthetic raw datasets (when no real root is configured) -> ViLT Arrow -> tokenizer.
# Each stage gets its config.yaml block as one --config JSON (workflow/data.py); paths travel as flags,
# quoted so that a path with a space stays one argument.


rule synth:
    input:
        code=stage_code("synth"),
    output:
        paths.synth_record,
    params:
        out=parent_of_output,
        config=data_stage.synth_settings,
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
        config=data_stage.prepare_settings,
        experiment=data_stage.experiment,
    wildcard_constraints:
        dataset="|".join(paths.all_datasets),
    log:
        paths.log("prepare/{dataset}.log"),
    conda:
        ENV
    shell:
        "python -m vlmerge.prepare --dataset {wildcards.dataset} --raw {params.raw:q} --out {params.out:q}"
        " --config {params.config:q} {params.experiment} > {log:q} 2>&1"


rule vocab:
    input:
        manifests=[paths.manifest(d) for d in config["data"]["datasets"]],
        code=stage_code("vocab"),
    output:
        directory(paths.tokenizer_dir),
    params:
        arrow=lambda wildcards, input: Path(input.manifests[0]).parent,
        config=data_stage.tokenizer_settings,
        experiment=data_stage.experiment,
    log:
        paths.log("vocab.log"),
    conda:
        ENV
    shell:
        "python -m vlmerge.vocab --arrow {params.arrow:q} --out {output:q} --config {params.config:q}"
        " {params.experiment} > {log:q} 2>&1"
