"""The report stage's bad-input error: the CLI turns it into a one-line message and exit code 2."""


class ReportError(ValueError):
    """A result or distance file that cannot be reported, naming the file and the key."""
