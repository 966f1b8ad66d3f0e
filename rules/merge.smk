# Grams, merges and weight distances (docs/merging.md). RegMean's grams come from each task's data, so a
# merge that needs them (or names used_experts_only) is made per task: results/merged/<task>/<name>.


rule grams:
    input:
        ms=merging.grams_ms,
        tokenizer=paths.tokenizer_dir,
        manifest=lambda wildcards: paths.manifest(wildcards.task),
        code=stage_code("grams"),
    output:
        grams=paths.grams("{task}"),
        sidecar=paths.grams("{task}").replace(".safetensors", ".json"),
    params:
        args=merging.grams_args,
    wildcard_constraints:
        task="|".join(TASKS),
    threads: config["pretrain"]["launch"]["threads"]
    log:
        paths.log("grams/{task}.log"),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m vlmerge.grams {params.args} --out {output.grams:q} > {log:q} 2>&1"


# The same on an ablation lineage's MS model (report.ablations): results/grams/<task>@<variant>.
use rule grams as grams_ablation with:
    output:
        grams=paths.grams("{task}", "{variant}"),
        sidecar=paths.grams("{task}", "{variant}").replace(".safetensors", ".json"),
    wildcard_constraints:
        task="|".join(TASKS),
        variant="|".join(ablations.variants) or "^$",
    log:
        paths.log("grams/{task}@{variant}.log"),


rule merge:
    input:
        unpack(merging.inputs),
    output:
        ckpt=paths.merged("{name}"),
        sidecar=paths.merged("{name}").replace(".safetensors", ".json"),
    params:
        args=merging.args,
    wildcard_constraints:
        name=merging.task_independent(),
    log:
        paths.log("merge/{name}.log"),
    conda:
        ENV
    shell:
        "python -m vlmerge.merge {params.args} --out {output.ckpt:q} > {log:q} 2>&1"


use rule merge as merge_per_task with:
    output:
        ckpt=paths.merged("{name}", "{task}"),
        sidecar=paths.merged("{name}", "{task}").replace(".safetensors", ".json"),
    wildcard_constraints:
        name=merging.task_dependent(),
        task="|".join(TASKS),
    log:
        paths.log("merge/{task}/{name}.log"),


rule distance:
    input:
        ms=paths.checkpoint("{run}"),
        seed=lambda wildcards: paths.checkpoint(seed_of(wildcards.run)),
        code=stage_code("distance"),
    output:
        paths.distance("{run}"),
    params:
        k=config["merge"]["distance_topk"],
    wildcard_constraints:
        run="ms_(" + "|".join(MS_SHARINGS) + ")(@seed[0-9]+)?",
    log:
        paths.log("distance/{run}.log"),
    conda:
        ENV
    shell:
        "python -m vlmerge.distance --ms {input.ms:q} --seed {input.seed:q} --k {params.k:q} --out {output:q} > {log:q} 2>&1"
