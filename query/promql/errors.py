"""The one error type of the PromQL package; ``error_type`` picks the HTTP status in the API layer."""
from __future__ import annotations

__all__ = ["PromQLError"]


class PromQLError(Exception):
    """``bad_data`` → 400 (parse/argument errors), ``execution`` → 422, ``unsupported`` → 501."""

    def __init__(self, message: str, error_type: str = "execution"):
        super().__init__(message)
        self.message = message
        self.error_type = error_type

    def __str__(self) -> str:
        return self.message
