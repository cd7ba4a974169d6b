"""The one exception type users see.

Every error rnnkit raises on bad input is an ``RnnkitError`` (a ``ValueError``), whose
message is one readable line: what was expected, what came, and how to fix it. The CLI
prints that line and exits non-zero, without a traceback.
"""

from __future__ import annotations


class RnnkitError(ValueError):
    """A user-facing error: one line saying what is wrong and how to fix it."""


class BundleError(RnnkitError):
    """A model bundle that is missing, truncated, corrupt or not rnnkit's."""


class DataError(RnnkitError):
    """Input data that cannot be used as given (shape, columns, NaNs, encoding, ...)."""
