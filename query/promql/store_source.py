"""Prometheus series over the OTel-exporter metric tables: the ``SeriesSource`` the PromQL engine reads.

Mapping (``shared/reference/promql.md`` §1, the OTel "Prometheus compatibility" rules as Prometheus' own OTLP
receiver applies them, strategy ``UnderscoreEscapingWithSuffixes``):

* ``__name__``: the OTel name split on characters outside ``[A-Za-z0-9:]`` and re-joined with ``_``; the unit as a
  word (``s`` → ``seconds``, ``By/s`` → ``bytes_per_second``, ``{request}`` and ``1`` → nothing) unless the name
  already has that word; ``_total`` for monotonic sums, ``_ratio`` for gauges of unit ``1``; a leading digit gets
  ``_``. Names that already carry their suffixes (Istio metrics forwarded by a collector) come out unchanged.
* per table: gauge → ``name``; monotonic sum → ``name_total`` (counter); non-monotonic cumulative sum → ``name``
  (gauge); histogram → ``name_bucket{le}`` (running sum of ``BucketCounts``, ``le="+Inf"`` = ``Count``),
  ``name_sum``, ``name_count``; summary → ``name{quantile}``, ``name_sum``, ``name_count``; exponential
  histogram → ``name_sum``, ``name_count`` only.
* labels: data-point ``Attributes`` with names sanitised (``[^A-Za-z0-9_]`` → ``_``, leading digit → ``key_``;
  keys that collide are joined with ``;`` in key order), empty values dropped; ``job`` = ``service.namespace/
  service.name`` (or ``service.name``), ``instance`` = ``service.instance.id``, both overriding attributes; every
  other resource attribute goes on one ``target_info`` series per (job, instance), value 1 at the resource's
  point times. Scope attributes are not promoted (Prometheus' default).
* temporality: delta monotonic sums and delta histograms keep the counter names and are turned into cumulative
  series by a running sum over the selected samples (rates of windows with two samples are then exact); the
  ``rate``/``increase`` push-down sums the deltas in the window instead (Prometheus' advice for native deltas,
  no extrapolation). Non-monotonic delta sums are dropped (no Prometheus equivalent).
* staleness: a point with the ``NoRecordedValue`` flag (``Flags & 1``) becomes Prometheus' stale-NaN sample.

Reads go through the series index (``deploy/clickhouse/006_metric_series.sql``): ``otel_metrics_series`` holds
each stored series' identity once per hour (service, name, unit, resource and point attributes, sum flags, bounds,
quantiles), keyed by ``SeriesId``, the hash the metric tables compute for every point at insert. ``__name__`` is
resolved in Python against a per-tenant metric catalogue (read from the index); the other label matchers go into
SQL on the index's maps as bound parameters and are applied again, exactly, to each series' label sets, so the SQL
side only has to be no stricter than PromQL. Samples are then read grouped by ``SeriesId`` (``SeriesId IN`` the
selected ids when the matchers leave some out), never touching the attribute maps of the sample rows. Stored
series that map to one Prometheus label set (resources that differ only in attributes Prometheus does not show)
are read as one, as a grouping by the label-defining columns would. ``/series``, ``/labels`` and label values
read the index alone: a series counts as present in a range when the span of its points in some hour overlaps it.
A series' labels are read from the index's maps once per server (``SeriesInfoCache``, keyed by ``SeriesId``, which
fixes them); later look-ups read only the ids and stale flags of the series in range.
"""
from __future__ import annotations

import functools
import math
import re
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from meshscope.sqlutil import is_text

from .matchers import match_labels, matches

__all__ = ["StoreSeriesSource", "MetricCatalogue", "CatalogueEntry", "normalize_name", "label_name", "unit_word",
           "load_series", "SeriesInfoCache", "STALE_NAN", "STALE_NAN_BITS", "is_stale", "RawSeries", "format_le"]

NS = 1_000_000_000
CATALOGUE_TTL_S = 15.0
GRID_SETTINGS = {"allow_experimental_ts_to_grid_aggregate_function": 1}

from .source import STALE_BITS as STALE_NAN_BITS  # noqa: E402
from .source import STALE_NAN, GridSeries, RawSeries, is_stale, note_start_dependent  # noqa: E402


# ----------------------------------------------------------------------------------------------- name mapping
_UNIT_WORDS = {"d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds",
               "us": "microseconds", "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes",
               "GiBy": "gibibytes", "TiBy": "tibibytes", "KBy": "kilobytes", "MBy": "megabytes",
               "GBy": "gigabytes", "TBy": "terabytes", "m": "meters", "V": "volts", "A": "amperes", "J": "joules",
               "W": "watts", "g": "grams", "Cel": "celsius", "Hz": "hertz", "%": "percent", "1": ""}
_PER_UNIT_WORDS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}
_PROM_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NAME_SPLIT = re.compile(r"[^A-Za-z0-9:]+")
_UNIT_CLEAN = re.compile(r"[^A-Za-z0-9]+")
_LABEL_CLEAN = re.compile(r"[^A-Za-z0-9_]")


def _clean_unit(word: str) -> str:
    return _UNIT_CLEAN.sub("_", word).strip("_")


def unit_word(unit: str) -> tuple[str, str]:
    """(main word, per word) of an OTel unit: ``By/s`` → (``bytes``, ``second``); annotations drop out."""
    main, _, per = unit.partition("/")
    main_w = "" if ("{" in main or "}" in main) else _clean_unit(_UNIT_WORDS.get(main, main))
    per_w = "" if ("{" in per or "}" in per) else _clean_unit(_PER_UNIT_WORDS.get(per, per))
    return main_w, per_w


def normalize_name(name: str, unit: str = "", kind: str = "gauge") -> str:
    """Prometheus family name of an OTel metric. ``kind``: ``counter`` (monotonic sum), ``gauge`` (gauge table),
    ``sum`` (non-monotonic sum), ``histogram``, ``summary``."""
    if _PROM_NAME.fullmatch(name):
        # already a Prometheus name (Istio, collector-forwarded): keep its underscores as they are (a deviation
        # from otlptranslator, which would collapse "__"; it lets every Prometheus name round-trip)
        tokens = name.split("_")
        lead = ""
        while tokens and tokens[0] == "":
            lead += "_"
            tokens.pop(0)
        return lead + _normalize_tokens(tokens, unit, kind)
    tokens = [t for t in _NAME_SPLIT.split(name) if t]
    out = _normalize_tokens(tokens, unit, kind)
    if out and out[0].isdigit():
        out = "_" + out
    return out


def _normalize_tokens(tokens: list[str], unit: str, kind: str) -> str:
    main_w, per_w = unit_word(unit)
    if main_w and main_w not in tokens:
        tokens.append(main_w)
    if per_w and not (len(tokens) >= 2 and tokens[-2] == "per" and tokens[-1] == per_w):
        tokens += ["per", per_w]
    if kind == "counter":
        tokens = [t for t in tokens if t != "total"] + ["total"]
    if unit == "1" and kind == "gauge":
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    return "_".join(tokens)


@functools.lru_cache(maxsize=65536)
def label_name(key: str) -> str:
    """Prometheus label name of an attribute key (otlptranslator ``LabelNamer``, multiple underscores kept)."""
    if key.startswith("__") and key.endswith("__") and len(key) > 4:
        return key
    out = _LABEL_CLEAN.sub("_", key)
    if out and out[0].isdigit():
        out = "key_" + out
    return out


def attributes_to_labels(attrs: dict[str, str]) -> dict[str, str]:
    """Sanitised label names; colliding keys joined with ``;`` in the order of the original keys; empty dropped."""
    return _sorted_attributes_to_labels(sorted(attrs.items()))


def _sorted_attributes_to_labels(items) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in items:
        if v == "":
            continue
        n = label_name(k)
        if n == "":
            continue
        out[n] = f"{out[n]};{v}" if n in out else v
    return out


def job_instance(service: str, namespace: str, instance: str) -> dict[str, str]:
    out = {}
    if service:
        out["job"] = f"{namespace}/{service}" if namespace else service
    if instance:
        out["instance"] = instance
    return out


def format_le(bound: float) -> str:
    """``le``/``quantile`` text as Prometheus writes it: shortest plain decimal (Go ``'f', -1``), ``+Inf``."""
    if math.isinf(bound):
        return "+Inf" if bound > 0 else "-Inf"
    if math.isnan(bound):
        return "NaN"
    r = repr(float(bound))
    if "e" in r or "E" in r:
        from decimal import Decimal
        r = format(Decimal(r), "f")
    if r.endswith(".0"):
        r = r[:-2]
    return r


# ----------------------------------------------------------------------------------------------- catalogue
TABLES = {"gauge": "otel_metrics_gauge", "sum": "otel_metrics_sum", "histogram": "otel_metrics_histogram",
          "exponential_histogram": "otel_metrics_exponential_histogram", "summary": "otel_metrics_summary"}
SERIES_TABLE = "otel_metrics_series"  # the series index (deploy/clickhouse/006_metric_series.sql)


@dataclass(frozen=True)
class CatalogueEntry:
    """One stored OTel metric (table, name, unit, sum flags) and one Prometheus series name it produces.

    ``component``: ``value`` (gauge/sum), ``bucket``, ``sum``, ``count``, ``quantile`` (summary value series)."""
    table: str
    metric: str
    unit: str
    monotonic: bool
    temporality: int
    prom_name: str
    component: str
    family: str
    prom_type: str
    help: str = field(default="", compare=False)


def catalogue_entries(table: str, metric: str, unit: str, monotonic: bool, temporality: int,
                      help_text: str = "") -> list[CatalogueEntry]:
    """The Prometheus names one stored metric answers to (none for non-monotonic delta sums)."""
    def e(name, comp, fam, typ):
        return CatalogueEntry(table, metric, unit, monotonic, temporality, name, comp, fam, typ, help_text)

    if table == "gauge":
        n = normalize_name(metric, unit, "gauge")
        return [e(n, "value", n, "gauge")]
    if table == "sum":
        if monotonic:
            n = normalize_name(metric, unit, "counter")
            return [e(n, "value", n, "counter")]
        if temporality == 1:
            return []
        n = normalize_name(metric, unit, "sum")
        return [e(n, "value", n, "gauge")]
    if table == "histogram":
        n = normalize_name(metric, unit, "histogram")
        return [e(n + "_bucket", "bucket", n, "histogram"), e(n + "_sum", "sum", n, "histogram"),
                e(n + "_count", "count", n, "histogram")]
    if table == "exponential_histogram":
        n = normalize_name(metric, unit, "histogram")
        return [e(n + "_sum", "sum", n, "histogram"), e(n + "_count", "count", n, "histogram")]
    if table == "summary":
        n = normalize_name(metric, unit, "summary")
        return [e(n, "quantile", n, "summary"), e(n + "_sum", "sum", n, "summary"),
                e(n + "_count", "count", n, "summary")]
    return []


class MetricCatalogue:
    """Per-tenant list of stored metrics and the Prometheus names they map to, refreshed every few seconds.

    Reads the series index (``otel_metrics_series``), so it stays cheap at any data size; a name whose points lie
    outside a query's range resolves but selects nothing."""

    def __init__(self, store, ttl_s: float = CATALOGUE_TTL_S, series_info: "SeriesInfoCache | None" = None):
        self.store = store
        self.ttl_s = ttl_s
        self.series_info = series_info if series_info is not None else SeriesInfoCache()
        self._cache: dict[str, tuple[float, list[CatalogueEntry]]] = {}
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()

    def entries(self, tenant: str) -> list[CatalogueEntry]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(tenant)
            if hit and now - hit[0] < self.ttl_s:
                return hit[1]
        # the series index: one row per series and hour, far fewer than the sample rows (gauges and summaries
        # are stored there as not monotonic, cumulative)
        rows = self.store.query(
            f"SELECT Kind, MetricName, MetricUnit, IsMonotonic, AggregationTemporality, "
            f"anyIf(MetricDescription, MetricDescription != '') FROM {self.store.database}.{SERIES_TABLE} "
            f"WHERE TenantId = {{tenant:String}} GROUP BY Kind, MetricName, MetricUnit, IsMonotonic, "
            f"AggregationTemporality", parameters={"tenant": tenant}).rows
        out: list[CatalogueEntry] = []
        for kind, metric, unit, mono, temp, help_text in rows:
            out += catalogue_entries(kind, metric, unit, bool(mono), int(temp), help_text or "")
        out.sort(key=lambda c: (c.prom_name, c.table, c.metric, c.unit, c.temporality))
        with self._lock:
            self._cache[tenant] = (now, out)
        return out

    def resolve(self, tenant: str, name_matchers: list) -> list[CatalogueEntry]:
        """Entries whose Prometheus name satisfies every ``__name__`` matcher."""
        return [c for c in self.entries(tenant) if all(matches(m, c.prom_name) for m in name_matchers)]


# ----------------------------------------------------------------------------------------------- SQL pieces
# label expressions over the series index (the only table label matchers run on)
_INSTANCE_SQL = "ServiceInstanceId"
# as the mapping: the resource's job/instance when it has them, else a data-point attribute of that name
_JOB_SQL = ("if(ServiceName != '', if(ServiceNamespace != '', concat(ServiceNamespace, '/', ServiceName), "
            "ServiceName), Attributes['job'])")
_INSTANCE_LABEL_SQL = f"if({_INSTANCE_SQL} != '', {_INSTANCE_SQL}, Attributes['instance'])"


class _Params:
    """Collects bound parameters under generated names."""

    def __init__(self, base: dict | None = None):
        self.values: dict = dict(base or {})

    def add(self, value, typ: str = "String") -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"{{{name}:{typ}}}"


def _label_sql(name: str, p: _Params) -> str | None:
    """SQL for a label's value as the mapping computes it, or None when it cannot be pushed down exactly."""
    if name == "job":
        return _JOB_SQL
    if name == "instance":
        return _INSTANCE_LABEL_SQL
    if name in ("__name__", "le", "quantile") or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name.startswith("key_"):
        return None
    key = p.add(name)
    if "_" not in name:  # no other attribute key sanitises to it
        return f"Attributes[{key}]"
    # every key that sanitises to it (``http.method`` and ``http_method`` → ``http_method``), non-empty values
    # joined with ';' in key order, as ``attributes_to_labels`` does
    return (f"arrayStringConcat(arrayFilter(v -> v != '', arrayMap(k -> Attributes[k], arraySort(arrayFilter("
            f"k -> replaceRegexpAll(k, '[^A-Za-z0-9_]', '_') = {key}, mapKeys(Attributes))))), ';')")


def _matcher_sql(m, p: _Params) -> str | None:
    if not is_text(m.value):  # a "\xff" escape: no stored value is such bytes; matched in Python, not sent to SQL
        return None
    expr = _label_sql(m.name, p)
    if expr is None:
        return None
    if m.op in ("=", "!="):
        return f"{expr} {'=' if m.op == '=' else '!='} {p.add(m.value)}"
    pat = p.add(f"^(?:{m.value})$")
    return f"{'' if m.op == '=~' else 'NOT '}match({expr}, {pat})"


MIN_SQL_NS, MAX_SQL_NS = 0, 9_000_000_000 * NS  # DateTime64(9) ends in 2262; API "all time" clamps here


def _clamp(ns: int) -> int:
    return max(MIN_SQL_NS, min(MAX_SQL_NS, int(ns)))


def _time_sql(ns_param: str) -> str:
    return f"fromUnixTimestamp64Nano({ns_param})"


def _dt_literal(ns: int) -> str:
    """A DateTime64(3) literal for grid parameters (aggregate parameters must be literals; this is an int)."""
    ms = int(ns) // 1_000_000
    return f"toDateTime64('{ms // 1000}.{ms % 1000:03d}', 3)"


def _dec_literal(ns: int) -> str:
    ms = int(ns) // 1_000_000
    return f"toDecimal64('{ms // 1000}.{ms % 1000:03d}', 3)"


_MAX_HOUR_S = 2**32 - 1  # DateTime (the index's Hour) ends in 2106


def _hours(start_ns: int, end_ns: int) -> tuple[int, int]:
    """[first, last] ``Hour`` of the index rows that can hold samples in [start_ns, end_ns], as Unix seconds."""
    lo = _clamp(start_ns) // NS // 3600 * 3600
    hi = _clamp(end_ns) // NS
    return min(lo, _MAX_HOUR_S), min(hi, _MAX_HOUR_S)


@dataclass
class _Indexed:
    """One stored series as the index describes it (``otel_metrics_series``), seen as one catalogue entry."""
    sid: int
    entry: CatalogueEntry
    base: dict[str, str]       # labels without __name__ / le / quantile
    extra: tuple               # histogram bounds or summary quantiles
    service: str
    key: tuple                 # stored series with equal keys are read as one (as the SQL grouping did)
    _sets: list | None = None
    _unnamed: list | None = None

    def label_sets(self) -> list[dict[str, str]]:
        """The Prometheus label sets this series answers to (one per ``le`` / ``quantile``), in that order."""
        return [lb for lb, _ in self.labelled()]

    def labelled(self) -> list[tuple[dict[str, str], tuple]]:
        """(labels, sorted items) per label set, built once (do not modify them)."""
        if self._sets is None:
            e, comp = self.entry, self.entry.component
            if comp == "bucket":
                sets = [dict(self.base, __name__=e.family + "_bucket", le=le)
                        for le in [format_le(b) for b in self.extra] + ["+Inf"]]
            elif comp == "quantile":
                sets = [dict(self.base, __name__=e.family, quantile=format_le(q)) for q in self.extra]
            else:
                sets = [dict(self.base, __name__=_component_name(e))]
            self._sets = [(lb, tuple(sorted(lb.items()))) for lb in sets]
        return self._sets

    def unnamed(self) -> list[tuple[dict[str, str], tuple]]:
        """(labels, sorted items) per label set without ``__name__`` (what ``rate`` returns), built once."""
        if self._unnamed is None:
            self._unnamed = [({k: v for k, v in lb.items() if k != "__name__"},
                              tuple(kv for kv in items if kv[0] != "__name__"))  # items are sorted already
                             for lb, items in self.labelled()]
        return self._unnamed


@dataclass
class _Lookup:
    """The series of one (table, component) group that a selector can see in a time range."""
    series: dict[int, _Indexed]        # representative SeriesId -> series (what sample queries group into)
    remap: dict[int, int]              # other SeriesId -> its representative (same key)
    ids: list[int]                     # every selected SeriesId
    services: list[str]
    restricted: bool                   # fewer series than the names have: sample reads need ``SeriesId IN``
    any_stale: bool

    def group_sql(self, p: "_Params") -> str:
        if not self.remap:
            return "SeriesId"
        src = sorted(self.remap)
        return (f"transform(SeriesId, {p.add(src, 'Array(UInt64)')}, "
                f"{p.add([self.remap[s] for s in src], 'Array(UInt64)')}, SeriesId)")


@dataclass
class _SeriesInfo:
    """What the index's maps say about one stored series: fixed for the life of its ``SeriesId``."""
    entry_key: tuple           # (MetricName, MetricUnit, monotonic, temporality): which catalogue entries
    base: dict[str, str]
    extra: tuple               # the table's histogram bounds or summary quantiles, whatever the component
    service: str
    ident: tuple               # everything the labels come from, but the bounds/quantiles
    views: dict = field(default_factory=dict)   # catalogue entry -> _Indexed (label sets built once)

    def indexed(self, sid: int, entry: CatalogueEntry) -> _Indexed:
        ix = self.views.get(entry)
        if ix is None:
            # only buckets and quantiles see the bounds: _sum/_count of two histograms that differ in bounds alone
            # are one Prometheus series
            ext = self.extra if entry.component in ("bucket", "quantile") else ()
            ix = self.views[entry] = _Indexed(sid, entry, self.base, ext, self.service, self.ident + (ext,))
        return ix


class SeriesInfoCache:
    """Series identities (labels) by ``SeriesId``, shared by every query of one server.

    ``SeriesId`` hashes every column a series' labels come from, so what the index says about an id never changes:
    a look-up reads only ids and stale flags from the index (no maps: 18 ms instead of 230 ms for 10,000 series
    over a day) and the maps of ids it has not seen before. Label sets are built once per series, not once per
    query. Bounded by label sets held (a histogram series holds one per ``le``), least recently used out first."""

    def __init__(self, max_label_sets: int = 200_000):
        self.max_label_sets = max_label_sets
        self._items: OrderedDict[tuple, tuple[_SeriesInfo, int]] = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get_many(self, keys: list[tuple]) -> dict[tuple, _SeriesInfo]:
        out = {}
        with self._lock:
            for k in keys:
                hit = self._items.get(k)
                if hit is not None:
                    self._items.move_to_end(k)
                    out[k] = hit[0]
        return out

    def put(self, key: tuple, info: _SeriesInfo) -> None:
        weight = len(info.extra) + 2  # the label sets a bucket series can yield, plus _sum/_count
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._weight -= old[1]
            self._items[key] = (info, weight)
            self._weight += weight
            while self._weight > self.max_label_sets and len(self._items) > 1:
                _, (_, w) = self._items.popitem(last=False)
                self._weight -= w

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._weight = 0


def _component_name(entry: CatalogueEntry) -> str:
    if entry.component == "value":
        return entry.prom_name
    return entry.family + ("_sum" if entry.component == "sum" else "_count")


# ----------------------------------------------------------------------------------------------- the source
class StoreSeriesSource:
    """``SeriesSource`` over one tenant's metric tables (one instance per query; cheap to make).

    Every read starts in the series index ``otel_metrics_series`` (one row per series and hour, labels stored
    once): the selector's names, units and label matchers pick the series there, each series' labels are built
    once in Python, and the samples are then read grouped by the integer ``SeriesId`` (``SeriesId IN`` only when
    the matchers leave out some series of the names), so no sample row's maps are read or hashed."""

    def __init__(self, store, tenant: str = "default", catalogue: MetricCatalogue | None = None,
                 max_series: int = 50_000, max_samples: int = 50_000_000):
        self.store = store
        self.tenant = tenant
        self.catalogue = catalogue or MetricCatalogue(store)
        self.max_series = max_series
        self.max_samples = max_samples
        self.db = store.database

    # -------------------------------------------------------------------------------- selection
    def _split(self, matchers: list) -> tuple[list, list]:
        names = [m for m in matchers if m.name == "__name__"]
        return names, [m for m in matchers if m.name != "__name__"]

    def _groups(self, matchers: list) -> tuple[dict, list]:
        names, labels = self._split(matchers)
        entries = self.catalogue.resolve(self.tenant, names)
        groups: dict[tuple, list[CatalogueEntry]] = {}
        for c in entries:
            groups.setdefault((c.table, c.component), []).append(c)
        return groups, labels

    def _index_conds(self, p: _Params, start_ns: int, end_ns: int) -> list[str]:
        """Index rows of this tenant whose samples can lie in [start_ns, end_ns]."""
        h_lo, h_hi = _hours(start_ns, end_ns)
        return [f"TenantId = {p.add(self.tenant)}",
                f"Hour >= toDateTime({p.add(h_lo, 'UInt32')})",
                f"Hour <= toDateTime({p.add(h_hi, 'UInt32')})",
                f"MinTime <= {_time_sql(p.add(_clamp(end_ns), 'Int64'))}",
                f"MaxTime >= {_time_sql(p.add(_clamp(start_ns), 'Int64'))}"]

    def _lookup(self, table: str, comp: str, entries: list[CatalogueEntry], label_matchers: list,
                matchers: list, start_ns: int, end_ns: int) -> _Lookup:
        """The series of ``entries`` (one table and component) in the range that the matchers can select.

        First the ids (and stale flags) of every series of the names in the range, which reads no maps; then, for
        ids the ``SeriesInfoCache`` has not seen, their labels, with the label matchers as SQL on the index's maps
        (an id that fails them is not selected, and not cached); then the matchers again, exactly
        (``match_labels``), on each series' label sets."""
        p = _Params()
        conds = self._index_conds(p, start_ns, end_ns)
        conds += [f"MetricName IN {p.add(sorted({c.metric for c in entries}), 'Array(String)')}",
                  f"Kind = {p.add(table)}",
                  f"MetricUnit IN {p.add(sorted({c.unit for c in entries}), 'Array(String)')}"]
        where = " AND ".join(conds)
        stale_of = dict(self.store.query(
            f"SELECT SeriesId, max(HasStale) FROM {self.db}.{SERIES_TABLE} WHERE {where} GROUP BY SeriesId",
            parameters=p.values).rows)
        cache = self.catalogue.series_info
        infos = {k[2]: v for k, v in cache.get_many([(self.tenant, table, sid) for sid in stale_of]).items()}
        missing = [sid for sid in stale_of if sid not in infos]
        if missing:
            pushed = [s for s in (_matcher_sql(m, p) for m in label_matchers) if s]
            if len(missing) < len(stale_of):
                pushed.append(f"SeriesId IN {p.add(sorted(missing), 'Array(UInt64)')}")
            extra = {"histogram": "any(ExplicitBounds)", "summary": "any(Quantiles)"}.get(table, "[]")
            sql = (f"SELECT SeriesId, any(MetricName), any(MetricUnit), any(IsMonotonic), "
                   f"any(AggregationTemporality), any(ServiceName), any(ServiceNamespace), any(ServiceInstanceId), "
                   f"any(Attributes), {extra} FROM {self.db}.{SERIES_TABLE} "
                   f"WHERE {' AND '.join([where] + pushed)} GROUP BY SeriesId")
            for sid, metric, unit, mono, temp, service, ns, inst, attrs, ext in \
                    self.store.query(sql, parameters=p.values).rows:
                items = tuple(sorted(attrs.items()))
                base = _sorted_attributes_to_labels(items)
                base.update(job_instance(service, ns, inst))
                ext = tuple(ext)
                entry_key = (metric, unit, bool(mono), int(temp))
                info = _SeriesInfo(entry_key, base, ext, service, entry_key + (service, ns, inst, items))
                cache.put((self.tenant, table, int(sid)), info)
                infos[int(sid)] = info
        by_key = _entry_index(entries)
        found: dict[int, _Indexed] = {}
        for sid in stale_of:
            info = infos.get(sid)
            entry = by_key.get(info.entry_key) if info is not None else None
            if entry is None:  # failed the pushed matchers, or another unit/kind of a selected name
                continue
            s = info.indexed(sid, entry)
            if label_matchers and not any(match_labels(matchers, lb) for lb in s.label_sets()):
                continue
            found[sid] = s
        reps: dict[tuple, int] = {}
        remap: dict[int, int] = {}
        for sid in sorted(found):
            rep = reps.setdefault(found[sid].key, sid)
            if rep != sid:
                remap[sid] = rep
        return _Lookup({sid: s for sid, s in found.items() if sid not in remap}, remap, sorted(found),
                       sorted({s.service for s in found.values()}), len(found) < len(stale_of),
                       any(stale_of[sid] for sid in found))

    def _sample_conds(self, lk: _Lookup, p: _Params, start_ns: int, end_ns: int) -> list[str]:
        """Sample rows of the looked-up series in [start_ns, end_ns] (cheap columns only: PREWHERE)."""
        found = list(lk.series.values())
        conds = [f"TenantId = {p.add(self.tenant)}",
                 f"MetricName IN {p.add(sorted({s.entry.metric for s in found}), 'Array(String)')}",
                 f"MetricUnit IN {p.add(sorted({s.entry.unit for s in found}), 'Array(String)')}",
                 f"TimeUnix >= {_time_sql(p.add(_clamp(start_ns), 'Int64'))}",
                 f"TimeUnix <= {_time_sql(p.add(_clamp(end_ns), 'Int64'))}"]
        if lk.restricted:
            conds.append(f"ServiceName IN {p.add(lk.services, 'Array(String)')}")
            conds.append(f"SeriesId IN {p.add(lk.ids, 'Array(UInt64)')}")
        return conds

    def select(self, matchers: list, start_ns: int, end_ns: int) -> list[RawSeries]:
        """Raw samples in [start_ns, end_ns] of every series the matchers select, ascending; stale markers as
        StaleNaN. Series whose label sets coincide (two OTel metrics mapping to one name) are merged."""
        groups, label_matchers = self._groups(matchers)
        out: dict[tuple, list[tuple[dict, np.ndarray, np.ndarray]]] = {}
        total = 0
        for (table, comp), entries in sorted(groups.items()):
            for labels, ts, vals in self._read(table, comp, entries, label_matchers, matchers, start_ns, end_ns):
                if not match_labels(matchers, labels):
                    continue
                total += len(ts)
                if total > self.max_samples:
                    from .errors import PromQLError
                    raise PromQLError(f"query processing would load too many samples into memory "
                                      f"(more than {self.max_samples})", "execution")
                out.setdefault(tuple(sorted(labels.items())), []).append((labels, ts, vals))
        if self._wants_target_info(matchers):
            for labels, ts, vals in self._target_info(label_matchers, start_ns, end_ns):
                if match_labels(matchers, labels):
                    out.setdefault(tuple(sorted(labels.items())), []).append((labels, ts, vals))
        if len(out) > self.max_series:
            from .errors import PromQLError
            raise PromQLError(f"the query selects more than {self.max_series} series", "execution")
        result = []
        for key in sorted(out):
            parts = out[key]
            if len(parts) == 1:
                labels, ts, vals = parts[0]
            else:
                labels = parts[0][0]
                ts = np.concatenate([x[1] for x in parts])
                vals = np.concatenate([x[2] for x in parts])
                order = np.argsort(ts, kind="stable")
                ts, vals = ts[order], vals[order]
                keep = np.ones(len(ts), bool)
                keep[1:] = ts[1:] != ts[:-1]
                ts, vals = ts[keep], vals[keep]
            result.append(RawSeries({k: labels[k] for k in sorted(labels)}, ts, vals))
        return result

    def _read(self, table: str, comp: str, entries: list[CatalogueEntry], label_matchers: list, matchers: list,
              start_ns: int, end_ns: int) -> Iterable[tuple[dict, np.ndarray, np.ndarray]]:
        lk = self._lookup(table, comp, entries, label_matchers, matchers, start_ns, end_ns)
        if not lk.series:
            return
        p = _Params()
        conds = self._sample_conds(lk, p, start_ns, end_ns)
        val = {"value": "Value", "sum": "Sum", "count": "toFloat64(Count)",
               "bucket": "arrayMap(x -> toFloat64(x), BucketCounts)"}.get(comp, "`ValueAtQuantiles.Value`")
        # materialize(): ClickHouse 26.9 feeds a Sparse column (Flags, or a Value that is mostly 0) to groupArray
        # non-defaults first when one key covers a whole block (GROUP BY SeriesId does), which misaligns the arrays
        flags = "groupArray(materialize(Flags))" if lk.any_stale else "[]"
        sql = (f"SELECT {lk.group_sql(p)} AS sid, groupArray(materialize(toUnixTimestamp64Nano(TimeUnix))), "
               f"groupArray(materialize({val})), {flags} "
               f"FROM {self.db}.{TABLES[table]} PREWHERE {' AND '.join(conds)} GROUP BY sid")
        for sid, ts_list, val_list, flag_list in self.store.query(sql, parameters=p.values).rows:
            s = lk.series.get(sid)
            if s is None:  # a series of the names that the matchers did not select
                continue
            entry = s.entry
            ts = np.asarray(ts_list, dtype=np.int64)
            order = np.argsort(ts, kind="stable")
            ts = ts[order]
            if lk.any_stale:
                stale = (np.asarray(flag_list, dtype=np.uint32)[order] & 1).astype(bool)
            else:
                stale = np.zeros(len(ts), dtype=bool)
            delta = entry.temporality == 1
            if delta and comp in ("value", "sum", "count", "bucket"):
                note_start_dependent()  # running totals from the first selected sample
            if comp == "bucket":
                yield from self._buckets(entry, s.base, ts, [val_list[i] for i in order], s.extra, stale, delta)
                continue
            if comp == "quantile":
                yield from self._quantiles(entry, s.base, ts, [val_list[i] for i in order], s.extra, stale)
                continue
            vals = np.asarray(val_list, dtype=np.float64)[order]
            if delta and comp in ("value", "sum", "count"):
                vals = _cumulate(vals, stale)
            yield dict(s.base, __name__=_component_name(entry)), ts, _mark_stale(vals, stale)

    @staticmethod
    def _buckets(entry, base, ts, rows, bounds, stale, delta):
        k = len(bounds) + 1
        mat = np.zeros((len(ts), k), dtype=np.float64)
        for i, r in enumerate(rows):
            n = min(len(r), k)
            if n:
                mat[i, :n] = r[:n]
        if delta:
            mat = np.where(stale[:, None], 0.0, mat).cumsum(axis=0)
        cum = mat.cumsum(axis=1)
        les = [format_le(b) for b in bounds] + ["+Inf"]
        for j, le in enumerate(les):
            labels = dict(base, __name__=entry.family + "_bucket", le=le)
            yield labels, ts, _mark_stale(cum[:, j].copy(), stale)

    @staticmethod
    def _quantiles(entry, base, ts, rows, quantiles, stale):
        mat = np.full((len(ts), len(quantiles)), np.nan)
        for i, r in enumerate(rows):
            n = min(len(r), len(quantiles))
            mat[i, :n] = r[:n]
        for j, q in enumerate(quantiles):
            labels = dict(base, __name__=entry.family, quantile=format_le(q))
            yield labels, ts, _mark_stale(mat[:, j].copy(), stale)

    # -------------------------------------------------------------------------------- target_info
    @staticmethod
    def _wants_target_info(matchers: list) -> bool:
        names = [m for m in matchers if m.name == "__name__"]
        return all(matches(m, "target_info") for m in names)

    def _resources(self, label_matchers: list, start_ns: int, end_ns: int):
        """target_info's resources from the index: ({kind: {SeriesId: resource number}}, [labels per number - 1])."""
        job_inst = [m for m in label_matchers if m.name in ("job", "instance")]
        p = _Params()
        conds = self._index_conds(p, start_ns, end_ns) + [f"(ServiceName != '' OR {_INSTANCE_SQL} != '')"]
        pushed = [s for s in (_matcher_sql(m, p) for m in job_inst) if s]
        sql = (f"SELECT Kind, SeriesId, any(ServiceName), any(ResourceAttributes) FROM {self.db}.{SERIES_TABLE} "
               f"WHERE {' AND '.join(conds + pushed)} GROUP BY Kind, SeriesId")
        numbers: dict[tuple, int] = {}
        labels_of: list[dict] = []
        per_kind: dict[str, dict[int, int]] = {}
        for kind, sid, service, res in self.store.query(sql, parameters=p.values).rows:
            res = dict(res)
            labels = attributes_to_labels({k: v for k, v in res.items()
                                           if k not in ("service.name", "service.namespace", "service.instance.id")})
            labels.update(job_instance(service, res.get("service.namespace", ""), res.get("service.instance.id", "")))
            labels["__name__"] = "target_info"
            key = tuple(sorted(labels.items()))
            if key not in numbers:
                numbers[key] = len(labels_of) + 1
                labels_of.append(labels)
            per_kind.setdefault(kind, {})[int(sid)] = numbers[key]
        return per_kind, labels_of, bool(pushed)

    def _target_info(self, label_matchers: list, start_ns: int, end_ns: int):
        """One series per resource with value 1 at each distinct point time of that resource (any table)."""
        per_kind, labels_of, restricted = self._resources(label_matchers, start_ns, end_ns)
        times: list[set] = [set() for _ in labels_of]
        for kind, ids in sorted(per_kind.items()):
            p = _Params()
            sids = sorted(ids)
            conds = [f"TenantId = {p.add(self.tenant)}",
                     f"TimeUnix >= {_time_sql(p.add(_clamp(start_ns), 'Int64'))}",
                     f"TimeUnix <= {_time_sql(p.add(_clamp(end_ns), 'Int64'))}"]
            if restricted:
                conds.append(f"SeriesId IN {p.add(sids, 'Array(UInt64)')}")
            num = (f"transform(SeriesId, {p.add(sids, 'Array(UInt64)')}, "
                   f"{p.add([ids[s] for s in sids], 'Array(UInt32)')}, toUInt32(0))")
            sql = (f"SELECT {num} AS r, groupUniqArray(toUnixTimestamp64Nano(TimeUnix)) "
                   f"FROM {self.db}.{TABLES[kind]} PREWHERE {' AND '.join(conds)} GROUP BY r")
            for r, ts in self.store.query(sql, parameters=p.values).rows:
                if r:  # 0: a series without service or instance
                    times[r - 1].update(ts)
        for labels, ts_set in zip(labels_of, times):
            if ts_set:
                ts = np.array(sorted(ts_set), dtype=np.int64)
                yield labels, ts, np.ones(len(ts))

    # -------------------------------------------------------------------------------- metadata
    def series(self, matchers: list, start_ns: int, end_ns: int) -> list[dict[str, str]]:
        """Label sets of the selected series that have samples in the range (``/api/v1/series``), from the index
        alone: a series counts when the first-to-last span of its points in some hour overlaps the range."""
        groups, label_matchers = self._groups(matchers)
        seen: dict[tuple, dict] = {}
        for (table, comp), entries in sorted(groups.items()):
            lk = self._lookup(table, comp, entries, label_matchers, matchers, start_ns, end_ns)
            for s in lk.series.values():
                for labels, items in s.labelled():
                    if not label_matchers or match_labels(matchers, labels):
                        seen[items] = labels
        if self._wants_target_info(matchers):
            _, labels_of, _ = self._resources(label_matchers, start_ns, end_ns)
            for labels in labels_of:
                if match_labels(matchers, labels):
                    seen[tuple(sorted(labels.items()))] = labels
        return [dict(key) for key in sorted(seen)]  # keys are the sorted items

    def label_names(self, start_ns: int, end_ns: int) -> list[str]:
        """Every label name of the tenant's series in the range (``/api/v1/labels`` without ``match[]``)."""
        p = _Params()
        sql = (f"SELECT Kind, groupUniqArrayArray(mapKeys(Attributes)), max(ServiceName != ''), "
               f"max({_INSTANCE_SQL} != '') FROM {self.db}.{SERIES_TABLE} "
               f"WHERE {' AND '.join(self._index_conds(p, start_ns, end_ns))} GROUP BY Kind")
        names: set[str] = set()
        for kind, keys, j, i in self.store.query(sql, parameters=p.values).rows:
            names.add("__name__")
            names.update(n for n in (label_name(k) for k in keys) if n)
            if j:
                names.add("job")
            if i:
                names.add("instance")
            if kind == "histogram":
                names.add("le")
            if kind == "summary":
                names.add("quantile")
        return sorted(names)

    def label_values(self, name: str, start_ns: int, end_ns: int) -> list[str]:
        """Values of one label across the tenant's series in the range (``/api/v1/label/<name>/values``)."""
        if name == "__name__":
            return self.metric_names()
        p = _Params()
        expr = _label_sql(name, p)
        if expr is None:  # le, quantile, key_* (with target_info's labels): from the label sets
            return sorted({s[name] for s in self.series([], start_ns, end_ns) if s.get(name)})
        known = self._known_label_values(name, start_ns, end_ns)
        if known is not None:
            return known
        sql = (f"SELECT DISTINCT v FROM (SELECT {expr} AS v FROM {self.db}.{SERIES_TABLE} "
               f"WHERE {' AND '.join(self._index_conds(p, start_ns, end_ns))}) WHERE v != ''")
        return sorted(r[0] for r in self.store.query(sql, parameters=p.values).rows)

    def _known_label_values(self, name: str, start_ns: int, end_ns: int, most: int = 200_000) -> list[str] | None:
        """The values from the series-identity cache when it knows every series in the range (the ids cost 15 ms
        for 10,000 series over a day; the index's maps 230 ms), else None. Grafana asks at every dashboard load."""
        p = _Params()
        rows = self.store.query(
            f"SELECT Kind, SeriesId FROM {self.db}.{SERIES_TABLE} "
            f"WHERE {' AND '.join(self._index_conds(p, start_ns, end_ns))} GROUP BY Kind, SeriesId LIMIT {most + 1}",
            parameters=p.values).rows
        if len(rows) > most:
            return None
        known = self.catalogue.series_info.get_many([(self.tenant, kind, int(sid)) for kind, sid in rows])
        if len(known) < len(rows):
            return None
        return sorted({v for info in known.values() if (v := info.base.get(name))})

    def metadata(self) -> dict[str, list[dict]]:
        """``/api/v1/metadata``: family → [{type, help, unit}]."""
        out: dict[str, list[dict]] = {}
        for c in self.catalogue.entries(self.tenant):
            item = {"type": c.prom_type, "help": c.help, "unit": unit_word(c.unit)[0]}
            lst = out.setdefault(c.family, [])
            if item not in lst:
                lst.append(item)
        return out

    def metric_names(self) -> list[str]:
        return sorted({c.prom_name for c in self.catalogue.entries(self.tenant)})

    # -------------------------------------------------------------------------------- push-down
    def _pushable(self, fn: str, matchers: list, range_ns: int, rest: tuple):
        """The checks both push-downs share: (grid, label matchers, groups of entries) or None to decline.
        ``grid`` = (lo, hi, step_ns, n_steps) with the offset applied."""
        if fn not in ("rate", "increase"):
            return None
        offset_ns, steps = (0, rest[0]) if len(rest) == 1 else (int(rest[0]), rest[1])
        start_ns, end_ns, step_ns = _grid(steps)
        if start_ns is None or range_ns <= 0:
            return None
        names, label_matchers = self._split(matchers)
        entries = self.catalogue.resolve(self.tenant, names)
        if self._wants_target_info(matchers) and not names:
            return None
        n_steps = (end_ns - start_ns) // step_ns + 1 if step_ns else 1
        if any(c.component == "quantile" for c in entries) or (step_ns and (end_ns - start_ns) % step_ns):
            return None
        if any(c.table == "sum" and not c.monotonic for c in entries) or \
                any(c.table == "gauge" for c in entries):
            return None  # gauges: Prometheus' rate applies counter-reset logic regardless; keep to the raw path
        groups: dict[tuple, list[CatalogueEntry]] = {}
        for c in entries:
            groups.setdefault((c.table, c.component), []).append(c)
        return (start_ns - offset_ns, end_ns - offset_ns, step_ns, n_steps), label_matchers, sorted(groups.items())

    def _too_many(self, n: int) -> None:
        if n > self.max_series:
            from .errors import PromQLError
            raise PromQLError(f"the query selects more than {self.max_series} series", "execution")

    def range_function(self, fn: str, matchers: list, range_ns: int, *rest) -> list | None:
        """``rate``/``increase`` evaluated in ClickHouse with ``timeSeriesRateToGrid``/``…IncreaseToGrid``
        (Prometheus' extrapolation, verified equal in the reference §2.6): returns ``[(labels, values)]`` with one
        float per step (NaN = no value; the metric name is kept, the engine drops it), or None when this call is
        not one the push-down handles (the engine then evaluates the raw samples itself).

        ``rest``: ``times_ns`` (evaluation times, evenly spaced, offset already applied) or ``offset_ns, steps``
        with ``steps`` = (start_ns, end_ns, step_ns) or an array of times. Answers ``GridSeries``."""
        plan = self._pushable(fn, matchers, range_ns, rest)
        if plan is None:
            return None
        (lo, hi, step_ns, n_steps), label_matchers, groups = plan
        out: dict[tuple, np.ndarray] = {}
        for (table, comp), ents in groups:
            lk = self._lookup(table, comp, ents, label_matchers, matchers, lo - range_ns + 1, hi)
            for delta, sql, params in self._grid_queries(fn, table, comp, lk, lo, hi, step_ns, range_ns):
                for sid, g in self.store.query(sql, parameters=params, settings=GRID_SETTINGS).rows:
                    s = lk.series.get(sid)
                    if s is None or (s.entry.temporality == 1) != delta:
                        continue
                    rows = g if comp == "bucket" else [g]  # one grid per label set (per le for buckets)
                    for j, (labels, key) in enumerate(s.labelled()):
                        if not match_labels(matchers, labels):
                            continue
                        if key in out:  # two stored metrics, one series: Prometheus would see one merged series
                            return None
                        out[key] = _grid_array(rows[j] if j < len(rows) else [], n_steps)
                        self._too_many(len(out))
        return [GridSeries(dict(k), vals, ~np.isnan(vals)) for k, vals in sorted(out.items(), key=lambda kv: kv[0])]

    def aggregate_range_function(self, op: str, fn: str, matchers: list, range_ns: int, group_of, *rest) \
            -> list | None:
        """``sum``/``count`` ``by``/``without`` of a pushed-down ``rate``/``increase``, aggregated in ClickHouse:
        the grids of all series are summed per output group there (``sumKahanForEach``; Prometheus sums with
        Kahan-Neumaier compensation, ClickHouse with Kahan's) and only one grid per group comes back, instead of
        one per series. ``group_of`` maps a series' labels (the metric name already dropped, as ``rate`` does) to
        its group's labels. Answers ``GridSeries`` per group, or None to decline (then the engine evaluates the
        inner call and aggregates itself; so do label sets that would collide once the name is dropped, whose
        error the engine reports)."""
        if op not in ("sum", "count"):
            return None
        plan = self._pushable(fn, matchers, range_ns, rest)
        if plan is None:
            return None
        (lo, hi, step_ns, n_steps), label_matchers, table_groups = plan
        seen: set[tuple] = set()
        group_ids: dict[tuple, int] = {}
        group_labels: list[dict] = []
        work = []
        for (table, comp), ents in table_groups:
            lk = self._lookup(table, comp, ents, label_matchers, matchers, lo - range_ns + 1, hi)
            # label set j (1-based) of series ids[i] is in group flat[offsets[i] + j] (-1: none); a series the
            # lookup did not keep maps to offset 0, the leading block of -1s
            pad = max((len(s.labelled()) for s in lk.series.values()), default=0)
            ids, offsets, flat = [], [], [-1] * pad
            for sid, s in sorted(lk.series.items()):
                ids.append(sid)
                offsets.append(len(flat))
                for (labels, _), (unnamed, k) in zip(s.labelled(), s.unnamed()):
                    # the names came from the catalogue: only label matchers can still leave a label set out
                    if label_matchers and not match_labels(matchers, labels):
                        flat.append(-1)
                        continue
                    if k in seen:
                        return None
                    seen.add(k)
                    self._too_many(len(seen))
                    g = group_of(unnamed)
                    gk = tuple(sorted(g.items()))
                    if gk not in group_ids:
                        group_ids[gk] = len(group_labels)
                        group_labels.append(g)
                    flat.append(group_ids[gk])
            if any(x >= 0 for x in flat):
                work.append((table, comp, lk, ids, offsets, flat))
        sums = np.zeros((len(group_labels), n_steps))
        counts = np.zeros((len(group_labels), n_steps))
        for table, comp, lk, ids, offsets, flat in work:
            for delta, sql, params in self._grid_queries(fn, table, comp, lk, lo, hi, step_ns, range_ns):
                p = _Params(params)
                gi = (f"arrayElement({p.add(flat, 'Array(Int32)')}, "
                      f"transform(sid, {p.add(ids, 'Array(UInt64)')}, {p.add(offsets, 'Array(UInt32)')}, "
                      f"toUInt32(0)) + j)")
                per_set = "ARRAY JOIN g AS grid, arrayEnumerate(g) AS j" if comp == "bucket" else \
                    "ARRAY JOIN [g] AS grid, [1] AS j"
                sql = (f"SELECT gi, sumKahanForEach(arrayMap(x -> if(isNaN(x), 0., x), grid)), "
                       f"sumForEach(arrayMap(x -> toUInt32(NOT isNaN(x)), grid)) "
                       f"FROM (SELECT {gi} AS gi, grid FROM ({sql}) {per_set}) WHERE gi >= 0 GROUP BY gi")
                for g_idx, ssum, cnt in self.store.query(sql, parameters=p.values, settings=GRID_SETTINGS).rows:
                    sums[g_idx] += _grid_array(ssum, n_steps, fill=0.0)
                    counts[g_idx] += _grid_array(cnt, n_steps, fill=0.0)
        out = []
        for i, g in enumerate(group_labels):
            present = counts[i] > 0
            if not present.any():
                continue
            vals = counts[i].copy() if op == "count" else np.where(present, sums[i], np.nan)
            out.append(GridSeries(g, vals, present))
        return out

    def _grid_queries(self, fn, table, comp, lk, lo, hi, step_ns, range_ns):
        """(delta, SQL, parameters) per temporality present among the looked-up series: one row per stored series,
        ``sid`` and ``g``, the grid of ``fn`` (per ``le`` for buckets; NaN where no value; already divided by the
        range for ``rate`` of delta series)."""
        if not lk.series:
            return
        temps = {s.entry.temporality == 1 for s in lk.series.values()}
        range_s = range_ns / NS
        grid = f"{_dt_literal(lo)}, {_dt_literal(hi)}, {_dec_literal(step_ns or NS)}, {_dec_literal(range_ns)}"
        func_cum = "timeSeriesRateToGrid" if fn == "rate" else "timeSeriesIncreaseToGrid"
        # grids come back as Array(Float64), NULL (no value) as NaN: numpy takes them without a per-value loop
        scale = f" / {range_s!r}" if fn == "rate" else ""
        if comp == "bucket":
            val = "arrayMap(x -> toFloat64(x), arrayCumSum(BucketCounts))"
            ts_arg = "arrayResize(CAST([] AS Array(DateTime64(9))), length(BucketCounts), TimeUnix)"
            aggs = {False: f"{func_cum}ForEach({grid})({ts_arg}, {val})",
                    True: f"timeSeriesSumToGridForEach({grid})({ts_arg}, {val})"}
            aggs = {False: f"arrayMap(b -> arrayMap(x -> ifNull(x, nan), b), {aggs[False]})",
                    True: f"arrayMap(b -> arrayMap(x -> ifNull(x, nan){scale}, b), {aggs[True]})"}
        else:
            val = {"value": "Value", "sum": "Sum", "count": "toFloat64(Count)"}[comp]
            aggs = {False: f"{func_cum}({grid})(TimeUnix, {val})",
                    True: f"timeSeriesSumToGrid({grid})(TimeUnix, {val})"}
            aggs = {False: f"arrayMap(x -> ifNull(x, nan), {aggs[False]})",
                    True: f"arrayMap(x -> ifNull(x, nan){scale}, {aggs[True]})"}
        for delta in (False, True):
            if delta not in temps:
                continue  # no selected series has this temporality: skip a whole scan
            # one aggregate per query: cumulative points get Prometheus' rate, delta points the sum of deltas
            p = _Params()
            conds = self._sample_conds(lk, p, lo - range_ns + 1, hi)
            if step_ns > range_ns:
                # rows that can fall in some window (t - range, t]; when the windows do not cover the whole range,
                # skip the samples between them (the aggregate's input shrinks by range/step)
                conds.append(f"((({p.add(int(hi), 'Int64')} - toUnixTimestamp64Nano(TimeUnix)) % "
                             f"{p.add(int(step_ns), 'Int64')}) < {p.add(int(range_ns), 'Int64')})")
            if lk.any_stale:
                conds.append("bitAnd(Flags, 1) = 0")
            if len(temps) > 1:
                conds.append(f"AggregationTemporality {'=' if delta else '!='} 1")
            sql = (f"SELECT {lk.group_sql(p)} AS sid, {aggs[delta]} AS g FROM {self.db}.{TABLES[table]} "
                   f"PREWHERE {' AND '.join(conds)} GROUP BY sid")
            yield delta, sql, p.values


def _entry_index(entries: list[CatalogueEntry]) -> dict[tuple, CatalogueEntry]:
    """(MetricName, MetricUnit, monotonic, temporality) → the catalogue entry a stored row belongs to."""
    return {(c.metric, c.unit, c.monotonic, c.temporality): c for c in entries}


def _grid(steps) -> tuple:
    if isinstance(steps, tuple) and len(steps) == 3:
        return int(steps[0]), int(steps[1]), int(steps[2])
    arr = np.asarray(steps, dtype=np.int64)
    if arr.ndim != 1 or len(arr) == 0:
        return None, None, None
    if len(arr) == 1:
        return int(arr[0]), int(arr[0]), 0
    d = np.diff(arr)
    if not np.all(d == d[0]) or d[0] <= 0:
        return None, None, None
    return int(arr[0]), int(arr[-1]), int(d[0])


def _grid_array(values, n: int, fill: float = np.nan) -> np.ndarray:
    """One grid row (floats, NaN = no value) as exactly ``n`` values."""
    arr = np.asarray(values if values is not None else [], dtype=np.float64)
    if len(arr) == n:
        return arr
    out = np.full(n, fill)
    out[:min(n, len(arr))] = arr[:n]
    return out


def _cumulate(vals: np.ndarray, stale: np.ndarray) -> np.ndarray:
    """Delta points → running total over the selected samples (stale points add nothing)."""
    return np.where(stale, 0.0, vals).cumsum()


def _mark_stale(vals: np.ndarray, stale: np.ndarray) -> np.ndarray:
    if stale.any():
        vals = vals.astype(np.float64, copy=True)
        vals[stale] = STALE_NAN
    return vals


# ----------------------------------------------------------------------------------------------- test-data loader
def load_series(store, tenant: str, series: Sequence[tuple[dict, Sequence[tuple[int, float]]]]) -> int:
    """Write Prometheus series so that this mapping reads them back unchanged (for ``promqltest`` ``load`` blocks).

    Representation: every series is one OTel **gauge** in ``otel_metrics_gauge`` (a gauge's name and values pass
    through untouched: ``MetricUnit=''`` adds no suffix and names ending in ``_ratio`` only need unit ``1``
    handled, which we avoid), ``MetricName`` = ``__name__`` verbatim, ``Attributes`` = the other labels (valid
    label names map to themselves), ``job``/``instance`` kept as attributes with an empty resource (the resource
    would override them). Stale markers (StaleNaN values) are written as NaN with ``Flags = 1``. Names that the
    normaliser would change (anything outside ``[A-Za-z0-9_:]``, ``__`` runs) are refused. Returns rows written."""
    names, units, attrs, ts_col, vals, flags = [], [], [], [], [], []
    for labels, samples in series:
        labels = dict(labels)
        name = labels.pop("__name__", "")
        if not name or normalize_name(name, "", "gauge") != name:
            raise ValueError(f"metric name {name!r} would not round-trip through the OTel mapping")
        for k in labels:
            if label_name(k) != k:
                raise ValueError(f"label name {k!r} would not round-trip through the OTel mapping")
        kept = {k: v for k, v in labels.items() if v != ""}
        for t, v in samples:
            v = float(v)
            stale = struct.pack("<d", v) == struct.pack("<Q", STALE_NAN_BITS)
            names.append(name)
            units.append("")
            attrs.append(kept)
            ts_col.append(int(t))
            vals.append(float("nan") if stale else v)
            flags.append(1 if stale else 0)
    if not names:
        return 0
    sql = (f"INSERT INTO {store.database}.otel_metrics_gauge (TenantId, MetricName, MetricUnit, Attributes, "
           f"StartTimeUnix, TimeUnix, Value, ValueType, Flags) "
           f"SELECT {{tenant:String}}, x.1, '', mapFromArrays(x.2, x.3), fromUnixTimestamp64Nano(0), "
           f"fromUnixTimestamp64Nano(x.4), toFloat64(x.5), 'double', x.6 "
           f"FROM (SELECT arrayJoin(arrayZip({{n:Array(String)}}, {{k:Array(Array(String))}}, "
           f"{{av:Array(Array(String))}}, {{t:Array(Int64)}}, {{v:Array(String)}}, {{f:Array(UInt32)}})) AS x)")
    chunk = 50_000
    for i in range(0, len(names), chunk):
        store.command(sql, parameters={"tenant": tenant, "n": names[i:i + chunk], "k": [list(a) for a in attrs[i:i + chunk]],
                                       "av": [list(a.values()) for a in attrs[i:i + chunk]],
                                       "t": ts_col[i:i + chunk], "v": [repr(v) for v in vals[i:i + chunk]],
                                       "f": flags[i:i + chunk]})
    return len(names)


# ----------------------------------------------------------------------------------------------- conformance
class ConformanceStoreSource:
    """The ``--store`` source of ``promql/conformance.py``: ``load`` blocks go through ``load_series`` into a real
    embedded store and are read back through the mapping, push-down included.

    promqltest data starts at the Unix epoch, which the tables' TTL would expire at once, so every timestamp is
    stored shifted by ``shift_ns`` (a whole day inside the retention) and shifted back on the way out; PromQL
    never sees the shift. ``clear`` switches to a fresh tenant."""

    def __init__(self, store=None, data_dir: str | None = None):
        if store is None:
            import tempfile

            from meshscope.schema import apply_schema
            from meshscope.store import EmbeddedStore
            store = EmbeddedStore(data_dir or tempfile.mkdtemp(prefix="meshscope-promql-conf-"))
            apply_schema(store)
            self._own = True
        else:
            self._own = False
        self.store = store
        day = 86400 * NS
        self.shift_ns = (time.time_ns() // day - 2) * day
        self._n = 0
        self._pending: dict[tuple, tuple[dict, list]] = {}
        self._native: list[tuple[dict, int]] = []
        self._new_tenant()

    def _new_tenant(self) -> None:
        import uuid
        self.tenant = f"conformance-{uuid.uuid4().hex[:12]}"
        self.inner = StoreSeriesSource(self.store, self.tenant, MetricCatalogue(self.store, ttl_s=3600))

    def clear(self) -> None:
        self._pending.clear()
        self._native.clear()
        self._new_tenant()

    def add(self, labels: dict, ts_ns: int, value: float) -> None:
        k = tuple(sorted(labels.items()))
        self._pending.setdefault(k, (dict(labels), []))[1].append((int(ts_ns) + self.shift_ns, float(value)))

    def add_native(self, labels: dict, ts_ns: int) -> None:
        self._native.append((dict(labels), int(ts_ns)))

    def _flush(self) -> None:
        if self._pending:
            load_series(self.store, self.tenant, list(self._pending.values()))
            self._pending.clear()
            self.inner.catalogue.invalidate()

    def _check_native(self, matchers, start_ns, end_ns) -> None:
        for labels, t in self._native:
            if start_ns <= t <= end_ns and match_labels(matchers, labels):
                from .errors import PromQLError
                raise PromQLError("native histograms are not supported", "unsupported")

    def select(self, matchers: list, start_ns: int, end_ns: int) -> list[RawSeries]:
        self._flush()
        self._check_native(matchers, start_ns, end_ns)
        out = self.inner.select(matchers, start_ns + self.shift_ns, end_ns + self.shift_ns)
        for s in out:
            s.ts = s.ts - self.shift_ns
        return out

    def range_function(self, fn: str, matchers: list, range_ns: int, times_ns) -> list | None:
        self._flush()
        times = np.asarray(times_ns, dtype=np.int64)
        if len(times):
            self._check_native(matchers, int(times.min()) - range_ns, int(times.max()))
        return self.inner.range_function(fn, matchers, range_ns, times + self.shift_ns)

    def label_names(self) -> list[str]:
        self._flush()
        return sorted({k for s in self.inner.series([], MIN_SQL_NS, MAX_SQL_NS) for k in s})

    def close(self) -> None:
        """The runner closes its source after every file; the process-wide store stays open for the next."""
        self.clear()

    def shutdown(self) -> None:
        if self._own:
            self.store.close()


_CONFORMANCE_SOURCE: ConformanceStoreSource | None = None


def conformance_source() -> ConformanceStoreSource:
    """One store per process (chDB opens a directory once); each call starts a fresh tenant."""
    global _CONFORMANCE_SOURCE
    if _CONFORMANCE_SOURCE is None:
        _CONFORMANCE_SOURCE = ConformanceStoreSource()
        import atexit
        atexit.register(_CONFORMANCE_SOURCE.shutdown)
    else:
        _CONFORMANCE_SOURCE.clear()
    return _CONFORMANCE_SOURCE
