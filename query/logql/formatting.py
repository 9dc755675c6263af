"""The ``line_format`` and ``label_format`` pipeline stages (Loki ``pkg/logql/log/fmt.go``).

Both render Go templates (see ``gotemplate``) against the entry's current labels. A template that fails at
execution time never drops the entry: Loki keeps the line (or skips that one label) and records
``__error__=TemplateFormatErr`` with the Go error text in ``__error_details__``.
"""
from __future__ import annotations

from .ast import LabelFmt
from .gotemplate import Template, TemplateExecError, TemplateSyntaxError, compile_template
from .labels import ERROR, TEMPLATE_FORMAT_ERR, LabelsBuilder
from .stage import Stage


class LineFormatStage(Stage):
    """``| line_format "<template>"``: replace the line by the rendered template."""

    def __init__(self, template_text: str):
        try:
            self.template: Template = compile_template(template_text, "line")
        except TemplateSyntaxError as e:
            raise TemplateSyntaxError(f"invalid line template: {e}") from None
        self.single_field = self.template.single_field

    def process(self, ts: int, line: str, lb: LabelsBuilder) -> str | None:
        if self.single_field is not None:
            # Loki's fast path for ``{{.name}}``: the label's value, or an empty line when it is absent
            v = lb.get(self.single_field)
            return "" if v is None else v
        try:
            return self.template.execute(lb.template_data(), line, ts)
        except TemplateExecError as e:
            lb.set_error(TEMPLATE_FORMAT_ERR, str(e))
            return line

    def __repr__(self):
        return f"LineFormatStage({self.template.text!r})"


class LabelFormatStage(Stage):
    """``| label_format dst=src, dst2="<template>"``: renames and templated assignments, left to right.

    The template data map is taken once per entry, when the first template runs (Go fills the map only while
    it is empty), so it sees renames listed before it but not the results of other templates of the stage.
    """

    def __init__(self, formats: list[LabelFmt]):
        seen: set[str] = set()
        for f in formats:
            if f.dst == ERROR:
                raise ValueError(f"{f.dst} cannot be formatted")
            if f.dst in seen:
                raise ValueError(f"multiple label name '{f.dst}' not allowed in a single format operation")
            seen.add(f.dst)
        self.ops: list[tuple[str, str, Template | None]] = []
        for f in formats:
            tmpl = None
            if not f.rename:
                try:
                    tmpl = compile_template(f.src, "label")
                except TemplateSyntaxError as e:
                    raise TemplateSyntaxError(f"invalid template for label '{f.dst}': {e}") from None
            self.ops.append((f.dst, f.src, tmpl))

    def process(self, ts: int, line: str, lb: LabelsBuilder) -> str | None:
        data: dict[str, str] | None = None
        for dst, src, tmpl in self.ops:
            if tmpl is None:
                v = lb.get(src)
                if v is not None:
                    lb.set(dst, v)
                    lb.delete(src)
                continue
            if not data:
                data = lb.template_data()
            try:
                lb.set(dst, tmpl.execute(data, line, ts))
            except TemplateExecError as e:
                lb.set_error(TEMPLATE_FORMAT_ERR, str(e))
        return line

    def __repr__(self):
        return f"LabelFormatStage({[(d, s, t is None) for d, s, t in self.ops]!r})"
