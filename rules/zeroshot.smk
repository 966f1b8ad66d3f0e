# Zero-shot retrieval (docs/tasks.md): seed, MA, MS and every merge scored on COCO and F30K test straight from
# their contrastive heads, before any fine-tuning. results/zeroshot/<method>.json pulls in exactly the
# checkpoints it scores (a per-task merge: each dataset's own merge).
# zeroshot.results(): every method's result, none when report.zeroshot is false (the `all` rule's share).
zeroshot = reporting.zeroshot


rule zeroshot_eval:
    input:
        unpack(zeroshot.inputs),
    output:
        zeroshot.result("{method}"),
    params:
        args=zeroshot.args,
    wildcard_constraints:
        method=zeroshot.method_pattern,
    threads: zeroshot.threads
    log:
        paths.log("zeroshot/{method}.log"),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m vlmerge.zeroshot {params.args} --out {output:q} > {log:q} 2>&1"
