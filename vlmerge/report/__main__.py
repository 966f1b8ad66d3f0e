"""``python -m vlmerge.report``: see :mod:`vlmerge.report.cli`."""

from vlmerge.report.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
