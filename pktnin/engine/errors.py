"""The engine's error types: both are usage errors (exit 2) with a one-line message."""

from __future__ import annotations

from pktnin.errors import UsageError


class EngineUnavailableError(UsageError, RuntimeError):
    """A backend cannot run on this machine (library or GPU missing). The message is one line."""


class ModelMismatchError(UsageError, RuntimeError):
    """A model or engine file does not fit this pktnin, this TensorRT or this GPU."""
