"""The error every evaluation input problem raises (stdlib only: the evaluation CLI imports it)."""
from __future__ import annotations

__all__ = ["EvaluationError"]


class EvaluationError(ValueError):
    """Bad evaluation input. ``source`` says which input: "ground_truth", "predictions" or
    "arguments", so that a command line can name the offending file."""

    def __init__(self, message: str, source: str = "arguments") -> None:
        super().__init__(message)
        self.source = source
