"""Error types shared by the library and the command line: what the caller asked for cannot work."""

from __future__ import annotations


class UsageError(Exception):
    """A choice of the caller cannot work: an option out of range, a path that does not exist, a model that does
    not fit. The command line reports the message and exits 2; anything else raised is a failure of the run."""


class OptionError(UsageError, ValueError):
    """An options object was given a value it refuses (raised by the options' own checks)."""
