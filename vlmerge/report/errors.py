"""The report stage's bad-input error: the CLI turns it into a one-line message and exit code 2."""

from vlmerge.errors import InputError


class ReportError(InputError):
    """A result or distance file that cannot be reported, naming the file and the key."""
