"""Traces: search, trace by id through the trace-id index, Jaeger and OTLP JSON shapes, RED from spans, logs of a trace.

``model`` holds the span/trace records, trace-id rules and how stored attribute strings get their type back;
``search`` reads the store; ``jaeger`` and ``otlp`` turn a trace into wire shapes; ``red`` computes rate, errors
and duration percentiles; the HTTP routes are in ``query/traces_api.py`` and the CLI in ``query/tracecli.py``.
"""
