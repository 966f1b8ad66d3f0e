# Fine-tuning and evaluation (docs/tasks.md): every method (ma, ms, each configured merge) on every task.
# results/<task>/<method>.json is the unit users ask for; it pulls in exactly its lineage.


rule finetune:
    input:
        unpack(finetuning.inputs),
    output:
        ckpt=paths.finetuned("{task}", "{method}"),
        sidecar=paths.finetuned("{task}", "{method}").replace(".safetensors", ".json"),
    params:
        args=finetuning.args,
        launch=finetuning.launch.launcher,
        work=finetuning.work_dir,
    wildcard_constraints:
        task="|".join(TASKS),
        method=finetuning.method_pattern,
    threads: finetuning.launch.threads
    resources:
        **finetuning.launch.resources,
    log:
        paths.log("finetune/{task}/{method}.log"),
    conda:
        ENV
    shell:
        # params.args is shell-quoted already (--config JSON and paths); the geometry flags override the JSON's
        # devices and nodes, so that a profile's resources decide them.
        "OMP_NUM_THREADS={threads} {params.launch} python -m vlmerge.finetune {params.args} --out {output.ckpt:q}"
        " --work-dir {params.work:q} --restart-stale-work-dir"
        " --devices {resources.tasks_per_node} --nodes {resources.nodes} > {log:q} 2>&1"


rule evaluate:
    input:
        ckpt=finetuning.evaluated,  # the method's fine-tune (a released fine-tuned checkpoint: its import)
        tokenizer=paths.tokenizer_dir,
        code=stage_code("evaluate"),
    output:
        paths.result("{task}", "{method}"),
    params:
        args=finetuning.eval_args,
    wildcard_constraints:
        task="|".join(TASKS),
        method=finetuning.method_pattern,
    threads: config["pretrain"]["launch"]["threads"]
    log:
        paths.log("evaluate/{task}/{method}.log"),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m vlmerge.evaluate {params.args} --out {output:q} > {log:q} 2>&1"
