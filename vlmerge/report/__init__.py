"""Stage ``report``: the paper's tables and plots from the result JSONs (docs/overview.md).

``python -m vlmerge.report`` (see :mod:`vlmerge.report.cli`). The package imports nothing heavy at
its top level, so the workflow can import :mod:`vlmerge.report.sweeps` and
:mod:`vlmerge.catalog.lineages` at Snakemake start-up.
"""
