"""deploy/grafana: every provisioning file and dashboard parses and has the structure Grafana requires, every
reference between them resolves, and every PromQL expression reads only metrics of pipeline/metrics.py.
(The SQL runs on both ClickHouse backends in tests/integration/test_grafana_sql.py.)"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from pipeline.readonly_sql import check_read_only
from tests.deploy_files import (
    CLICKHOUSE_TYPE,
    EXPRESSION_UID,
    PROMETHEUS_SERIES,
    PROMETHEUS_TYPE,
    ROOT,
    TimeRange,
    alert_rule_promql,
    alert_rules,
    alerting_files,
    all_files,
    assert_reads_known_series,
    categorized_files,
    dashboard_files,
    dashboard_promql,
    dashboard_provider_files,
    datasource_files,
    datasource_uids,
    expand,
    exported_metrics,
    load,
    panels,
    percentencode,
    promql_refs,
    provisioning_environment,
    provisioning_files,
    sql_queries,
    strings,
)

# How the account dashboard's statements filter by the selected account: percent-encoded by Grafana,
# decoded by ClickHouse, so no value can end the string literal (see SECURITY.md)
ACCOUNT_FILTER = "decodeURLComponent('${account:percentencode}')"

# Grafana's duration syntax for `for` and group intervals (Prometheus' model.ParseDuration).
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
UID = re.compile(r"^[a-zA-Z0-9_-]{1,40}$")  # Grafana's rule and data source uid limits


def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_file_under_deploy_is_tested() -> None:
    # Each category is read by the tests of this file, tests/unit/test_prometheus_files.py,
    # tests/unit/test_deploy_*.py and the integration tests; a file outside every category (or an alerting
    # file of unknown kind) is untested.
    untested = sorted(str(p.relative_to(ROOT)) for p in all_files() - categorized_files())
    assert untested == []
    assert dashboard_files() and datasource_files() and dashboard_provider_files()
    for kind in ("rules", "contact points", "policies"):
        assert alerting_files(kind), kind


@pytest.mark.parametrize("path", provisioning_files(), ids=lambda p: p.name)
def test_provisioning_files_are_version_1(path: Path) -> None:
    assert load(path)["apiVersion"] == 1


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_json_parses(path: Path) -> None:
    dashboard = load(path)
    assert isinstance(dashboard, dict)
    assert dashboard["title"] and UID.match(dashboard["uid"])


def test_environment_references_are_documented_variables() -> None:
    # Grafana replaces $NAME / ${NAME} by its environment in provisioning files (except in a rule's query
    # model): each one must be meant, and the README must say what to set.
    documented = readme()
    referenced = provisioning_environment()
    assert referenced, "the data sources take their addresses and credentials from the environment"
    for name in referenced:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f"${name} is not an environment variable"
        assert f"`{name}`" in documented, f"${name} is not documented in README.md"


def test_datasources_clickhouse_read_only_user_and_prometheus() -> None:
    sources = [d for path in datasource_files() for d in load(path)["datasources"]]
    uids = [d["uid"] for d in sources]
    assert len(uids) == len(set(uids))
    by_type = {d["type"]: d for d in sources}
    clickhouse, prometheus = by_type[CLICKHOUSE_TYPE], by_type[PROMETHEUS_TYPE]
    for source in sources:
        assert UID.match(source["uid"]) and source["name"] and source["access"] == "proxy"
    # Credentials only from the environment, the password only in secureJsonData (stored encrypted).
    assert clickhouse["jsonData"]["username"] == "$CLICKHOUSE_READONLY_USER"
    assert clickhouse["secureJsonData"] == {
        "password": "$CLICKHOUSE_READONLY_PASSWORD",
        "tlsCACert": "$CLICKHOUSE_CA_CERT",
    }
    assert "password" not in clickhouse["jsonData"]
    # TLS from the environment, the server's certificate checked against that CA, never skipped.
    assert clickhouse["jsonData"]["secure"] == clickhouse["jsonData"]["tlsAuthWithCACert"] == "$CLICKHOUSE_SECURE"
    assert "tlsSkipVerify" not in clickhouse["jsonData"]
    assert clickhouse["jsonData"]["host"].startswith("$") and clickhouse["jsonData"]["port"].startswith("$")
    assert clickhouse["jsonData"]["protocol"] in ("native", "http")
    assert prometheus["url"].startswith("$")


def test_dashboard_provider_loads_the_dashboards_folder() -> None:
    providers = [p for path in dashboard_provider_files() for p in load(path)["providers"]]
    assert providers
    for provider in providers:
        assert provider["type"] == "file" and provider["name"]
        assert Path(provider["options"]["path"]).is_absolute()
        assert provider["disableDeletion"] is True


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_panels_have_data_sources_and_targets(path: Path) -> None:
    uids = datasource_uids()
    dashboard = load(path)
    ids = [panel["id"] for panel in panels(dashboard)]
    assert ids and len(ids) == len(set(ids))
    for panel in panels(dashboard):
        where = f"{path.name}: {panel['title']!r}"
        source = panel["datasource"]
        assert uids.get(source["uid"]) == source["type"], f"{where}: unknown data source {source}"
        assert panel["targets"], f"{where}: no targets"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, where
        for target in panel["targets"]:
            assert target["datasource"] == source, f"{where}: target {target['refId']} of another data source"
            check_target(target, panel["type"], where)


def check_target(target: dict[str, Any], panel_type: str, where: str) -> None:
    if target["datasource"]["type"] == CLICKHOUSE_TYPE:
        assert target["editorType"] == "sql" and target["rawSql"].strip(), where
        # format: 0 time series, 1 table (the plugin's sqlutil formats), consistent with queryType.
        expected = {"timeSeries": 0, "table": 1}
        assert expected[target["queryType"]] == target["format"], where
        assert (target["format"] == 0) == (panel_type == "timeseries"), where
    else:
        assert target["expr"].strip(), where


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_variables_and_annotations_use_provisioned_data_sources(path: Path) -> None:
    uids = datasource_uids()
    dashboard = load(path)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for variable in dashboard["templating"]["list"]:
        assert uids.get(variable["datasource"]["uid"]) == variable["datasource"]["type"]
        assert variable["type"] == "query" and variable["query"].strip()
    for annotation in dashboard["annotations"]["list"]:
        if annotation.get("builtIn"):
            continue
        assert uids.get(annotation["datasource"]["uid"]) == annotation["datasource"]["type"]
        assert annotation["target"]["rawSql"].strip()
    # Every $variable a query uses is defined (Grafana leaves unknown ones in place: a broken query).
    for query in sql_queries():
        if query.where.startswith(path.name):
            used = set(re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(?!__)(\w+)", query.sql))
            assert {a or b for a, b in used} <= variables, query.where


def test_account_dashboard_selects_the_account_and_annotates_drops() -> None:
    dashboard = load(next(p for p in dashboard_files() if load(p)["uid"] == "engagement-account"))
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["account"]
    titles = {panel["title"] for panel in panels(dashboard)}
    assert {"Followers vs engagers", "Engagement rate", "Response rate", "Reciprocal circle (90 days)"} <= titles
    annotations = [a for a in dashboard["annotations"]["list"] if not a.get("builtIn")]
    assert any("engagement_alerts" in a["target"]["rawSql"] for a in annotations)
    for query in sql_queries():
        if query.where.startswith("account-engagement.json: panel"):
            assert ACCOUNT_FILTER in query.sql, f"{query.where}: not filtered by the selected account"
    # ${account:sqlstring} doubles quotes but leaves backslashes, which ClickHouse reads as escapes: an
    # account id (or a crafted ?var-account= in a dashboard URL) could break out of the string
    assert not any("sqlstring" in query.sql for query in sql_queries())


def test_percentencoded_values_cannot_leave_the_string() -> None:
    for value in ("x\\' OR 1 = 1 --", "o'brien", "\\", "é🙂 %27", "plain-id_1.~"):
        encoded = percentencode(value)
        assert re.fullmatch(r"[A-Za-z0-9_.~%-]*", encoded), encoded
        assert urllib.parse.unquote(encoded) == value


def test_every_sql_statement_expands_to_one_read_only_statement() -> None:
    # The macros expand (none that ClickHouse 18.16 lacks: $__timeInterval becomes toStartOfInterval), no `$`
    # is left over, and the result passes the project's read-only guard. No window functions, no WITH.
    queries = sql_queries()
    assert len(queries) >= 10
    time_range = TimeRange(1_769_904_000, 1_770_508_800, 60)
    for query in queries:
        sql = expand(query.sql, time_range, {"account": "acct-00042"})
        assert "$" not in sql, query.where
        check_read_only(sql)
        assert not re.search(r"\bOVER\s*\(|^\s*WITH\b", sql, re.I | re.M), query.where
        assert "toStartOfInterval" not in sql, query.where


def test_expand_follows_the_plugin() -> None:
    time_range = TimeRange(100, 200, 30)
    sql = "SELECT $__interval_s WHERE $__timeFilter(ts) AND a = ${v:sqlstring} AND b = '$v' AND c < $__toTime"
    assert expand(sql, time_range, {"v": "o'k"}) == (
        "SELECT 30 WHERE ts >= toDateTime(100) AND ts <= toDateTime(200) AND a = 'o''k' AND b = 'o'k' "
        "AND c < toDateTime(200)"
    )
    assert expand("${v:percentencode}", time_range, {"v": "o'k é"}) == "o%27k%20%C3%A9"
    with pytest.raises(ValueError, match="timeInterval"):
        expand("SELECT $__timeInterval(ts)", time_range, {})


def test_alert_rules_have_the_fields_file_provisioning_requires() -> None:
    uids = datasource_uids()
    dashboards = {load(p)["uid"]: load(p) for p in dashboard_files()}
    rules = list(alert_rules())
    rule_uids = [rule["uid"] for _, _, rule in rules]
    assert len(rule_uids) == len(set(rule_uids))
    assert {"engagement-drop", "engagement-pipeline-stalled", "engagement-dead-letter-rate-high"} <= set(rule_uids)
    assert "engagement-consumer-lag-high" in rule_uids
    for path in alerting_files("rules"):
        for group in load(path)["groups"]:
            assert group["orgId"] == 1 and group["name"] and group["folder"]
            assert DURATION.match(group["interval"])
    for _path, _group, rule in rules:
        where = rule["uid"]
        assert UID.match(rule["uid"]) and rule["title"], where
        assert DURATION.match(rule["for"]), where
        assert rule["noDataState"] in ("Alerting", "NoData", "OK", "KeepLast"), where
        assert rule["execErrState"] in ("Alerting", "Error", "OK", "KeepLast"), where
        refs = [query["refId"] for query in rule["data"]]
        assert len(refs) == len(set(refs)) and rule["condition"] in refs, where
        for query in rule["data"]:
            span = query["relativeTimeRange"]
            assert isinstance(span["from"], int) and isinstance(span["to"], int) and span["from"] >= span["to"]
            assert query["model"]["refId"] == query["refId"], where
            if query["datasourceUid"] == EXPRESSION_UID:
                model = query["model"]
                assert model["type"] in ("threshold", "reduce", "math", "classic_conditions"), where
                assert model.get("expression") in refs, f"{where}: expression of {query['refId']}"
            else:
                source = query["datasourceUid"]
                assert source in uids, f"{where}: unknown data source {source}"
                assert query["model"]["datasource"] == {"type": uids[source], "uid": source}, where
        # Grafana interpolates labels (and ${...} in annotations): templates use .Labels/.Values, not $.
        assert "$" not in " ".join(strings(rule["labels"])) + " ".join(strings(rule["annotations"])), where
        assert rule["annotations"]["summary"], where
        if "dashboardUid" in rule:
            dashboard = dashboards[rule["dashboardUid"]]
            assert rule["panelId"] in {panel["id"] for panel in panels(dashboard)}, where


def test_engagement_drop_rule_uses_the_detectors_alert_state() -> None:
    rule = next(rule for _, _, rule in alert_rules() if rule["uid"] == "engagement-drop")
    condition = next(q for q in rule["data"] if q["refId"] == rule["condition"])
    source = next(q for q in rule["data"] if q["refId"] == condition["model"]["expression"])
    sql = source["model"]["rawSql"]
    assert "FROM engagement_alerts" in sql and "argMax(state, window_start) = 'firing'" in sql
    assert "GROUP BY account_id" in sql  # one alert instance per account
    assert rule["noDataState"] == "OK"  # no account has ever been in a drop


def test_contact_points_and_policies_resolve() -> None:
    receivers = {}
    for path in alerting_files("contact points"):
        for point in load(path)["contactPoints"]:
            assert point["orgId"] == 1 and point["receivers"]
            for receiver in point["receivers"]:
                assert UID.match(receiver["uid"]) and receiver["type"] and receiver["settings"]
            receivers[point["name"]] = point
    policies = [p for path in alerting_files("policies") for p in load(path)["policies"]]
    assert policies

    def check(route: dict[str, Any]) -> None:
        assert route["receiver"] in receivers
        for matcher in route.get("object_matchers", []):
            assert len(matcher) == 3 and matcher[1] in ("=", "!=", "=~", "!~")
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if key in route:
                assert DURATION.match(route[key]), key
        for child in route.get("routes", []):
            check(child)

    for policy in policies:
        assert policy["orgId"] == 1
        check(policy)


def known_series() -> dict[str, frozenset[str]]:
    return {**exported_metrics(), **PROMETHEUS_SERIES}


@pytest.mark.parametrize(
    "query", dashboard_promql() + alert_rule_promql(), ids=lambda q: q.where.replace(" ", "_")[:80]
)
def test_grafana_promql_reads_only_pipeline_metrics(query: Any) -> None:
    assert promql_refs(query.expr).names, query.where
    assert_reads_known_series(query, known_series())  # pipeline/metrics.py's


def test_promql_refs_reads_names_and_labels() -> None:
    refs = promql_refs(
        'sum by (reason) (rate(a_total{reason!="late", x=~"}"}[$__rate_interval])) / on() group_left '
        "max(b:rec offset 10m) + histogram_quantile(0.9, c_bucket) and absent(up) + 1e3 * time()"
    )
    assert refs.names == {"a_total", "b:rec", "c_bucket", "up"}
    assert refs.matched == {("a_total", "reason"), ("a_total", "x")}
    assert refs.grouped == {"reason"}
