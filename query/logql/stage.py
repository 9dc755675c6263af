"""The one interface every LogQL pipeline stage implements (as Loki's ``Stage.Process``)."""
from __future__ import annotations

from .labels import LabelsBuilder


class Stage:
    """One step of a log pipeline: sees the line and its labels, returns the new line or None to drop it.

    Stages are compiled once per query and must keep no per-entry state between calls.
    """

    def process(self, ts: int, line: str, lb: LabelsBuilder) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError
