# Pre-training (docs/overview.md, docs/objectives.md): `seed` (MA, the seed run), `ms_<sharing>` (initialised from the seed by
# copying its weights into every expert, the paper's W0) and `ma` (the MA baseline). Lightning
# checkpoints live under work/ (not outputs), so a killed or requeued job resumes where it stopped.
# params.args is `--config <the run's settings as JSON>` plus the input folders, already shell-quoted.


rule pretrain:
    input:
        unpack(pretraining.inputs),
    output:
        ckpt=paths.checkpoint("{run}"),
        sidecar=paths.sidecar("{run}"),
    params:
        args=pretraining.args,
        launch=pretraining.launch.launcher,
        work=pretraining.work_dir,
    wildcard_constraints:
        run=pretraining.run_pattern,
    threads: pretraining.launch.threads
    resources:
        **pretraining.launch.resources,
    log:
        paths.log("pretrain/{run}.log"),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} {params.launch} python -m vlmerge.pretrain --out {output.ckpt:q}"
        " --work-dir {params.work:q} --restart-stale-work-dir {params.args}"
        " --devices {resources.tasks_per_node} --nodes {resources.nodes} > {log:q} 2>&1"
