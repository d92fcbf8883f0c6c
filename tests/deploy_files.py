"""The files of deploy/ as the tests see them.

Every file under deploy/ belongs to a category below; the tests take each category's files from these
functions, and a test checks that the categories hold every file, so a new file without a test fails. The
SQL and PromQL found in the Grafana and Prometheus files are extracted here, with Grafana's ClickHouse macros
expanded the way grafana-clickhouse-datasource (v4) expands them. (tests/deploy_manifests.py reads the
image, Compose and Kubernetes files.)
"""

from __future__ import annotations

import functools
import json
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import Counter, Gauge, Histogram

from pipeline import metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
GRAFANA = DEPLOY / "grafana"
PROMETHEUS = DEPLOY / "prometheus"
PROVISIONING = GRAFANA / "provisioning"
DOCKER = DEPLOY / "docker"
COMPOSE = DEPLOY / "compose"
K8S = DEPLOY / "k8s"

CLICKHOUSE_TYPE = "grafana-clickhouse-datasource"
PROMETHEUS_TYPE = "prometheus"
EXPRESSION_UID = "__expr__"  # Grafana's server-side expressions (threshold, reduce, math)

# What each alerting provisioning file holds, by its top-level key.
ALERTING_KINDS = {"groups": "rules", "contactPoints": "contact points", "policies": "policies"}


def load(path: Path) -> Any:
    """A provisioning, dashboard or rules file, parsed (JSON is YAML too, but parse it strictly)."""
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def all_files() -> set[Path]:
    return {p for p in DEPLOY.rglob("*") if p.is_file()}


def datasource_files() -> list[Path]:
    return sorted((PROVISIONING / "datasources").glob("*.yml"))


def dashboard_provider_files() -> list[Path]:
    return sorted((PROVISIONING / "dashboards").glob("*.yml"))


def dashboard_files() -> list[Path]:
    return sorted((GRAFANA / "dashboards").glob("*.json"))


def alerting_files(kind: str) -> list[Path]:
    """The files of provisioning/alerting holding ``kind`` (a value of ALERTING_KINDS)."""
    return [p for p in sorted((PROVISIONING / "alerting").glob("*.yml")) if alerting_kind(p) == kind]


def alerting_kind(path: Path) -> str | None:
    keys = set(load(path)) - {"apiVersion"}
    kinds = {ALERTING_KINDS[k] for k in keys if k in ALERTING_KINDS}
    return kinds.pop() if len(kinds) == 1 and len(keys) == 1 else None


def prometheus_config() -> Path:
    return PROMETHEUS / "prometheus.yml"


def prometheus_rule_files() -> list[Path]:
    return sorted((PROMETHEUS / "rules").glob("*.yml"))


def prometheus_test_files() -> list[Path]:
    return sorted((PROMETHEUS / "tests").glob("*.yml"))


def dockerfile() -> Path:
    return DOCKER / "Dockerfile"


def dockerignore() -> Path:
    """BuildKit reads ``<Dockerfile>.dockerignore`` beside the Dockerfile instead of the context's one."""
    return DOCKER / "Dockerfile.dockerignore"


def requirements_lock() -> Path:
    return DOCKER / "requirements.lock"


def compose_file() -> Path:
    return COMPOSE / "compose.yaml"


def compose_prometheus_config() -> Path:
    return COMPOSE / "prometheus" / "prometheus.yml"


def compose_clickhouse_users_files() -> list[Path]:
    return sorted((COMPOSE / "clickhouse" / "users.d").glob("*.xml"))


def kustomization_files() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def k8s_manifest_files() -> list[Path]:
    """Every Kubernetes manifest (not a kustomization) under deploy/k8s."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def categorized_files() -> set[Path]:
    files = {
        *datasource_files(),
        *dashboard_provider_files(),
        *dashboard_files(),
        prometheus_config(),
        *prometheus_rule_files(),
        *prometheus_test_files(),
        dockerfile(),
        dockerignore(),
        requirements_lock(),
        compose_file(),
        compose_prometheus_config(),
        *compose_clickhouse_users_files(),
        *kustomization_files(),
        *k8s_manifest_files(),
    }
    for kind in ALERTING_KINDS.values():
        files.update(alerting_files(kind))
    return files


@functools.cache
def datasource_uids() -> dict[str, str]:
    """uid -> type of every provisioned data source."""
    return {d["uid"]: d["type"] for path in datasource_files() for d in load(path)["datasources"]}


def provisioning_files() -> list[Path]:
    """Every Grafana provisioning file (data sources, dashboard providers, alerting)."""
    alerting = [p for kind in ALERTING_KINDS.values() for p in alerting_files(kind)]
    return [*datasource_files(), *dashboard_provider_files(), *alerting]


def strings(value: Any) -> list[str]:
    """Every string value inside ``value`` (nested dicts and lists)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


ENV_REFERENCE = re.compile(r"\$\{?(\w+)\}?")


def provisioning_environment() -> set[str]:
    """The environment variables Grafana substitutes in the provisioning files ($NAME / ${NAME}); a rule's
    query models are not interpolated, so they are left out."""
    referenced: set[str] = set()
    for path in provisioning_files():
        content = load(path)
        if "groups" in content:
            for group in content["groups"]:
                for rule in group["rules"]:
                    rest = {k: v for k, v in rule.items() if k != "data"}
                    referenced.update(ENV_REFERENCE.findall(" ".join(strings(rest))))
        else:
            referenced.update(ENV_REFERENCE.findall(" ".join(strings(content))))
    return referenced


def alert_rules() -> Iterator[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """(file, group, rule) of every provisioned Grafana alert rule."""
    for path in alerting_files("rules"):
        for group in load(path)["groups"]:
            for rule in group["rules"]:
                yield path, group, rule


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


# ---------------------------------------------------------------------------------------------------- SQL


@dataclass(frozen=True)
class SqlQuery:
    """One ClickHouse statement of a dashboard or an alert rule, and the shape Grafana needs from it.

    ``shape``: ``timeseries`` (a DateTime column ``time`` first, then numeric columns, ordered by time),
    ``stat`` (one row of numeric columns), ``table`` (rows with a DateTime ``time``), ``variable`` (one
    String column), ``annotation`` (``time``, ``timeEnd``, ``text``, ``tags``) or ``alert`` (String label
    columns and exactly one numeric column: one alert instance per row).
    """

    where: str
    shape: str
    sql: str


@functools.cache
def sql_queries() -> tuple[SqlQuery, ...]:
    found: list[SqlQuery] = []
    for path in dashboard_files():
        dashboard = load(path)
        name = path.name
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                if target.get("datasource", {}).get("type") == CLICKHOUSE_TYPE:
                    if target.get("format") == 0:
                        shape = "timeseries"
                    else:
                        shape = "stat" if panel["type"] == "stat" else "table"
                    where = f"{name}: panel {panel['title']!r} target {target['refId']}"
                    found.append(SqlQuery(where, shape, target["rawSql"]))
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("datasource", {}).get("type") == CLICKHOUSE_TYPE:
                found.append(SqlQuery(f"{name}: variable {variable['name']}", "variable", variable["query"]))
        for annotation in dashboard.get("annotations", {}).get("list", []):
            if annotation.get("datasource", {}).get("type") == CLICKHOUSE_TYPE:
                where = f"{name}: annotation {annotation['name']!r}"
                found.append(SqlQuery(where, "annotation", annotation["target"]["rawSql"]))
    for path, _group, rule in alert_rules():
        for query in rule["data"]:
            if datasource_uids().get(query["datasourceUid"]) == CLICKHOUSE_TYPE:
                where = f"{path.name}: rule {rule['uid']} query {query['refId']}"
                found.append(SqlQuery(where, "alert", query["model"]["rawSql"]))
    return tuple(found)


@dataclass(frozen=True)
class TimeRange:
    """What Grafana passes with a query: the range (Unix seconds) and the interval per data point."""

    start: int
    end: int
    interval_s: int


def sqlstring(value: str) -> str:
    """Grafana's ``${var:sqlstring}`` format: quoted, ``'`` doubled (a backslash is left as it is, which
    ClickHouse reads as an escape: the dashboards do not use this format for that reason)."""
    return "'" + value.replace("'", "''") + "'"


def percentencode(value: str) -> str:
    """Grafana's ``${var:percentencode}`` format (encodeURIComponent, and ``!'()*`` too): only
    ``A-Za-z0-9-_.~`` and ``%XX`` remain, nothing ClickHouse's string syntax reads as a quote or an escape."""
    return urllib.parse.quote(value, safe="-_.~")


# grafana-clickhouse-datasource v4 (pkg/macros): the macros and what they become.
_MACRO = re.compile(r"\$__(\w+)(?:\(([^()]*)\))?")
_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)")


def expand(sql: str, time_range: TimeRange, variables: Mapping[str, str]) -> str:
    """``sql`` as the data source sends it to ClickHouse: template variables, then macros, replaced.

    A macro this function does not know raises ValueError (``$__timeInterval`` is one: it becomes
    ``toStartOfInterval``, which ClickHouse 18.16 lacks).
    """

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        if name.startswith("__"):
            return match.group(0)  # a macro, expanded below
        value = variables[name]
        fmt = match.group(2)
        if fmt is None:
            return value
        if fmt == "sqlstring":
            return sqlstring(value)
        if fmt == "percentencode":
            return percentencode(value)
        raise ValueError(f"variable format {fmt!r} is not expanded by the tests")

    def macro(match: re.Match[str]) -> str:
        name, argument = match.group(1), match.group(2)
        start, end = f"toDateTime({time_range.start})", f"toDateTime({time_range.end})"
        if name == "timeFilter" and argument:
            column = argument.strip()
            return f"{column} >= {start} AND {column} <= {end}"
        if name == "fromTime" and not argument:
            return start
        if name == "toTime" and not argument:
            return end
        if name == "interval_s" and not argument:
            return str(max(time_range.interval_s, 1))
        raise ValueError(f"macro $__{name} is not expanded by the tests (nor portable to ClickHouse 18.16)")

    return _MACRO.sub(macro, _VARIABLE.sub(variable, sql))


# ---------------------------------------------------------------------------------------------------- PromQL


@dataclass(frozen=True)
class PromQuery:
    where: str
    expr: str


def dashboard_promql() -> list[PromQuery]:
    found: list[PromQuery] = []
    for path in dashboard_files():
        for panel in panels(load(path)):
            for target in panel.get("targets", []):
                if target.get("datasource", {}).get("type") == PROMETHEUS_TYPE:
                    where = f"{path.name}: panel {panel['title']!r} target {target['refId']}"
                    found.append(PromQuery(where, target["expr"]))
    return found


def alert_rule_promql() -> list[PromQuery]:
    return [
        PromQuery(f"{path.name}: rule {rule['uid']} query {query['refId']}", query["model"]["expr"])
        for path, _group, rule in alert_rules()
        for query in rule["data"]
        if datasource_uids().get(query["datasourceUid"]) == PROMETHEUS_TYPE
    ]


def rule_file_promql() -> list[PromQuery]:
    return [
        PromQuery(f"{path.name}: {rule.get('record') or rule.get('alert')}", rule["expr"])
        for path in prometheus_rule_files()
        for group in load(path)["groups"]
        for rule in group["rules"]
    ]


# Grafana's interval variables, as Grafana would fill them in (any valid duration does for parsing).
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def grafana_promql_to_prometheus(expr: str) -> str:
    for variable, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(variable, value)
    return expr


# Series that Prometheus makes itself for every target, and the labels it adds to every series.
PROMETHEUS_SERIES = {"up": frozenset()}
TARGET_LABELS = frozenset({"job", "instance"})


def exported_metrics() -> dict[str, frozenset[str]]:
    """Every series name that pipeline/metrics.py exposes -> its label names (plus ``le`` on buckets)."""
    names: dict[str, frozenset[str]] = {}
    for value in vars(metrics).values():
        # prometheus_client keeps a metric's name and labels in private attributes; there is no public
        # accessor for the labels of a metric without samples yet.
        if not isinstance(value, Counter | Gauge | Histogram):
            continue
        name, labels = value._name, frozenset(value._labelnames)
        if isinstance(value, Counter):
            names[f"{name}_total"] = labels
            names[f"{name}_created"] = labels
        elif isinstance(value, Gauge):
            names[name] = labels
        else:
            names[f"{name}_bucket"] = labels | {"le"}
            names[f"{name}_sum"] = labels
            names[f"{name}_count"] = labels
            names[f"{name}_created"] = labels
    return names


_STRING_LITERAL = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_SELECTOR = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"\"")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
    | {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk"}
    | {"quantile", "inf", "nan", "Inf", "NaN"}
)


@dataclass(frozen=True)
class PromRefs:
    """The series names an expression reads, the labels its selectors match on and those it groups by."""

    names: frozenset[str]
    matched: frozenset[tuple[str, str]]  # (series name, label)
    grouped: frozenset[str]


def promql_refs(expr: str) -> PromRefs:
    """Series names and labels of a PromQL expression (a tokenizer, enough for the expressions of deploy/)."""
    text = _STRING_LITERAL.sub('""', expr)
    names: set[str] = set()
    matched: set[tuple[str, str]] = set()
    for match in _SELECTOR.finditer(text):
        name = match.group(1)
        labels = _MATCHER.findall(match.group(2))
        if name is None:  # {__name__="..."} selectors are not used in deploy/
            raise ValueError(f"selector without a metric name in {expr!r}")
        names.add(name)
        matched.update((name, label) for label in labels)
    text = _SELECTOR.sub(lambda m: f" {m.group(1)} ", text)
    grouped = {label.strip() for m in _GROUPING.finditer(text) for label in m.group(1).split(",") if label.strip()}
    text = _RANGE.sub(" ", _GROUPING.sub(" ", text))
    for match in _IDENTIFIER.finditer(text):
        identifier, is_call = match.group(1), match.group(2)
        if not is_call and identifier not in _KEYWORDS:
            names.add(identifier)
    return PromRefs(frozenset(names), frozenset(matched), frozenset(grouped))


def assert_reads_known_series(query: PromQuery, series: Mapping[str, frozenset[str]]) -> None:
    """Every series ``query`` reads is in ``series`` (name -> its labels), with the labels it matches
    and groups by (target labels aside)."""
    refs = promql_refs(query.expr)
    unknown = refs.names - set(series)
    assert not unknown, f"{query.where}: not a known series: {sorted(unknown)}"
    for name, label in refs.matched:
        assert label in series[name] | TARGET_LABELS, f"{query.where}: {name} has no label {label}"
    available = set().union(*(series[name] for name in refs.names)) | TARGET_LABELS
    assert refs.grouped <= available, f"{query.where}: grouped by {sorted(refs.grouped - available)}"
