# Data stage: synthetic raw datasets (when no real root is configured) -> ViLT Arrow -> tokenizer.


rule synth:
    input:
        code=stage_code("synth"),
    output:
        paths.synth_record,
    params:
        out=parent_of_output,
        seed=config["data"]["synthetic"]["seed"],
        size=config["data"]["synthetic"]["size"],
        image_size=config["data"]["synthetic"]["image_size"],
        datasets=",".join(paths.synthetic_datasets()),
    log:
        paths.log("synth.log"),
    conda:
        ENV
    shell:
        "python -m vlmerge.synth --out {params.out} --seed {params.seed} --size {params.size}"
        " --image-size {params.image_size} --datasets {params.datasets} > {log} 2>&1"


rule prepare:
    input:
        raw=paths.raw_input,
        code=stage_code("prepare"),
    output:
        paths.manifest("{dataset}"),
    params:
        raw=paths.raw_root,
        out=parent_of_output,
        strict="--strict" if config["data"]["prepare"]["strict"] else "",
        shard_size=config["data"]["prepare"]["shard_size"],
        min_answer_count=config["data"]["prepare"]["min_answer_count"],
        rest_val_images=config["data"]["prepare"]["rest_val_images"],
    wildcard_constraints:
        dataset="|".join(paths.all_datasets),
    log:
        paths.log("prepare/{dataset}.log"),
    conda:
        ENV
    shell:
        "python -m vlmerge.prepare --dataset {wildcards.dataset} --raw {params.raw} --out {params.out}"
        " --shard-size {params.shard_size} --min-answer-count {params.min_answer_count}"
        " --rest-val-images {params.rest_val_images} {params.strict} > {log} 2>&1"


rule vocab:
    input:
        manifests=[paths.manifest(d) for d in config["data"]["datasets"]],
        code=stage_code("vocab"),
    output:
        directory(paths.tokenizer_dir),
    params:
        arrow=lambda wildcards, input: Path(input.manifests[0]).parent,
        source=paths.bert_vocab_arg,
        vocab_size=config["data"]["tokenizer"]["vocab_size"],
    log:
        paths.log("vocab.log"),
    conda:
        ENV
    shell:
        "python -m vlmerge.vocab --arrow {params.arrow} --out {output} {params.source}"
        " --vocab-size {params.vocab_size} > {log} 2>&1"
