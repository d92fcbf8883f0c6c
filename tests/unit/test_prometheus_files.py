"""deploy/prometheus without promtool: the scrape config points at the workers' /metrics, the rules read only
metrics of pipeline/metrics.py, and every alert has promtool unit tests that see it fire and not fire.
(tests/integration/test_prometheus_rules.py runs promtool itself.)"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from pipeline.settings import Settings
from tests.deploy_files import (
    PROMETHEUS_SERIES,
    assert_reads_known_series,
    exported_metrics,
    load,
    prometheus_config,
    prometheus_rule_files,
    prometheus_test_files,
    promql_refs,
    rule_file_promql,
)


def rules() -> list[dict[str, Any]]:
    return [rule for path in prometheus_rule_files() for group in load(path)["groups"] for rule in group["rules"]]


def recorded() -> dict[str, frozenset[str]]:
    """Recording rule name -> the labels its series keep (its top-level `by` labels)."""
    return {rule["record"]: promql_refs(rule["expr"]).grouped for rule in rules() if "record" in rule}


def test_scrape_config_reads_the_workers_metrics_endpoint() -> None:
    config = load(prometheus_config())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["engagement"]  # the rules and dashboards select up{job="engagement"}
    assert job["metrics_path"] == "/metrics"
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    port = Settings.from_env({}).web_port
    assert targets and all(t.endswith(f":{port}") for t in targets)
    directory = prometheus_config().parent
    assert sorted(directory / name for name in config["rule_files"]) == prometheus_rule_files()


@pytest.mark.parametrize("path", prometheus_rule_files(), ids=lambda p: p.name)
def test_rules_are_named_and_documented(path: Path) -> None:
    groups = load(path)["groups"]
    assert groups
    for group in groups:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            if "record" in rule:
                assert rule["record"].startswith("engagement:") and rule["record"].count(":") == 2
            else:
                assert rule["alert"].startswith("Engagement")
                assert rule["labels"]["severity"] in ("page", "warning", "info")
                assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@pytest.mark.parametrize("query", rule_file_promql(), ids=lambda q: q.where.replace(" ", "_"))
def test_rules_read_only_pipeline_metrics(query: Any) -> None:
    assert_reads_known_series(query, {**exported_metrics(), **PROMETHEUS_SERIES, **recorded()})


def test_every_alert_has_tests_that_see_it_fire_and_stay_quiet() -> None:
    tested_files: set[Path] = set()
    seen: dict[str, set[bool]] = defaultdict(set)
    for path in prometheus_test_files():
        suite = load(path)
        tested_files.update((path.parent / name).resolve() for name in suite["rule_files"])
        for case in suite["tests"]:
            for check in case.get("alert_rule_test", []):
                seen[check["alertname"]].add(bool(check["exp_alerts"]))
    assert tested_files == {p.resolve() for p in prometheus_rule_files()}
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts
    for alert in sorted(alerts):
        assert seen[alert] == {True, False}, f"{alert}: tests where it fires and where it does not: {seen[alert]}"
