# Released vl-merging checkpoints (config released:, docs/released.md, workflow/released.py). Each is imported
# into results/released/<name>.safetensors; results/<task>/released_<name>[_<merge>].json then come from the
# evaluate, finetune, grams and merge rules, whose path functions resolve a released lineage
# (merging.released, a workflow.released.Released).


rule import_released:
    input:
        unpack(merging.released.import_inputs),
    output:
        ckpt=paths.released("{name}"),
        sidecar=paths.released("{name}").replace(".safetensors", ".json"),
    params:
        args=merging.released.import_args,
    wildcard_constraints:
        name=merging.released.entry_pattern,
    log:
        paths.log("import/{name}.log"),
    conda:
        ENV
    shell:
        "python -m vlmerge.import {params.args} --out {output.ckpt:q} > {log:q} 2>&1"


# Grams of a released MS model for RegMean: results/grams/<task>@released_<name>.
use rule grams as grams_released with:
    output:
        grams=paths.grams("{task}", "{variant}"),
        sidecar=paths.grams("{task}", "{variant}").replace(".safetensors", ".json"),
    wildcard_constraints:
        task="|".join(TASKS),
        variant=merging.released.variant_pattern,
    log:
        paths.log("grams/{task}@{variant}.log"),

