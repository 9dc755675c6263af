"""The per-entry label set a LogQL pipeline works on (Loki's ``LabelsBuilder``).

Three categories are kept apart because LogQL treats them differently: *stream* labels (the indexed ones the
selector matched), *structured metadata* (other attributes, usable by label filters without a parser) and
*parsed* labels (made by ``json``/``logfmt``/... and ``label_format``). A parser never overwrites a stream or
metadata label: it names its label ``<key>_extracted`` instead; between parsers the first value wins.
``label_format`` overwrites anything. The error slot (``__error__`` / ``__error_details__``) is separate so that
``drop`` and label filters can address it like a label.
"""
from __future__ import annotations

ERROR = "__error__"
ERROR_DETAILS = "__error_details__"
PRESERVE_ERROR = "__preserve_error__"

JSON_PARSER_ERR = "JSONParserErr"
LOGFMT_PARSER_ERR = "LogfmtParserErr"
LABEL_FILTER_ERR = "LabelFilterErr"
SAMPLE_EXTRACTION_ERR = "SampleExtractionErr"
TEMPLATE_FORMAT_ERR = "TemplateFormatErr"


class LabelsBuilder:
    """Mutable labels of one log entry while it runs through the stages."""

    __slots__ = ("stream", "metadata", "parsed", "error", "error_details")

    def __init__(self, stream: dict[str, str], metadata: dict[str, str] | None = None):
        self.stream = dict(stream)
        self.metadata = dict(metadata) if metadata else {}
        self.parsed: dict[str, str] = {}
        self.error: str | None = None
        self.error_details: str | None = None

    # -- reading ------------------------------------------------------------------------------------
    def get(self, name: str) -> str | None:
        """The label's current value (parsed wins over metadata over stream), or None when absent."""
        if name == ERROR:
            return self.error
        if name == ERROR_DETAILS:
            return self.error_details
        v = self.parsed.get(name)
        if v is None:
            v = self.metadata.get(name)
            if v is None:
                v = self.stream.get(name)
        return v

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def base_has(self, name: str) -> bool:
        """True when a stream or metadata label has this name (a parser must then use ``name_extracted``)."""
        return name in self.stream or name in self.metadata

    def labels(self) -> dict[str, str]:
        """The merged output label set, error labels included."""
        out = {**self.stream, **self.metadata, **self.parsed}
        if self.error is not None:
            out[ERROR] = self.error
        if self.error_details is not None:
            out[ERROR_DETAILS] = self.error_details
        return out

    def template_data(self) -> dict[str, str]:
        """What ``line_format``/``label_format`` templates see: every current label, ``__error__`` included."""
        return self.labels()

    # -- writing ------------------------------------------------------------------------------------
    def add_parsed(self, name: str, value: str) -> None:
        """A parser's label: renamed on a clash with stream/metadata, ignored if already parsed this entry."""
        if name in self.stream or name in self.metadata:
            name += "_extracted"
        if name not in self.parsed:
            self.parsed[name] = value

    def set(self, name: str, value: str) -> None:
        """Overwrite wherever the label lives (``label_format``); the new value counts as parsed."""
        if name == ERROR:
            self.error = value
            return
        if name == ERROR_DETAILS:
            self.error_details = value
            return
        self.stream.pop(name, None)
        self.metadata.pop(name, None)
        self.parsed[name] = value

    def delete(self, name: str) -> None:
        if name == ERROR:
            self.error = None
        elif name == ERROR_DETAILS:
            self.error_details = None
        else:
            self.stream.pop(name, None)
            self.metadata.pop(name, None)
            self.parsed.pop(name, None)

    def set_error(self, error: str, details: str | None = None) -> None:
        """Record a stage error. A label-filter error never replaces an earlier error; others do."""
        if error == LABEL_FILTER_ERR and self.error is not None:
            return
        self.error = error
        if details is not None:
            self.error_details = details

    def names(self) -> list[str]:
        return list(self.labels())
