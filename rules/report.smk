# Tables and plots (docs/overview.md): every result JSON (and zero-shot JSON, unless report.zeroshot is false)
# -> results/tables/*.{csv,md,tex} + results/plots/*.{svg,png}.
# `snakemake tables` builds them; `snakemake --report report.html` collects them with the captions
# of workflow/report/.


rule tables:
    input:
        results=reporting.results(),
        zeroshot=reporting.zeroshot_results(),
        distances=reporting.distances(),
        code=stage_code("report"),
    output:
        main=report(reporting.tables("main"), caption="../workflow/report/main.rst", category="Main table"),
        zeroshot=report(reporting.tables("zeroshot"), caption="../workflow/report/zeroshot.rst",
                        category="Zero-shot retrieval"),
        more=report([f for f in reporting.tables() if f not in reporting.tables("main") + reporting.tables("zeroshot")],
                    caption="../workflow/report/tables.rst", category="Sweeps and ablations"),
        plots=report(reporting.plots(), caption="../workflow/report/plots.rst", category="Plots"),
    params:
        args=reporting.args,
    log:
        paths.log("report.log"),
    conda:
        ENV
    shell:
        "python -m vlmerge.report {params.args} > {log:q} 2>&1"
