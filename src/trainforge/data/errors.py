"""DataError: the one error every reader, stream and data spec raises for bad data or options."""

from __future__ import annotations


class DataError(ValueError):
    """A bad data file or option: the message names the file, line, key or field, and the fix."""
