"""promtool (Debian's prometheus package; ``tests/services/prometheus.sh install``) on deploy/prometheus: the
config and the rule files are valid, the rules' unit tests pass (each alert firing and not firing on scripted
series), and every PromQL expression of the Grafana dashboards and alert rules parses."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy_files import (
    alert_rule_promql,
    dashboard_promql,
    grafana_promql_to_prometheus,
    prometheus_config,
    prometheus_rule_files,
    prometheus_test_files,
)
from tests.deploy_manifests import bind_mounts, compose_service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: run `tests/services/prometheus.sh install`")
    return found


def run(promtool: str, *args: str | Path) -> str:
    done = subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_config_and_its_rule_files_check(promtool: str) -> None:
    output = run(promtool, "check", "config", prometheus_config())
    assert f"{len(prometheus_rule_files())} rule files found" in output


@pytest.mark.parametrize("path", prometheus_rule_files(), ids=lambda p: p.name)
def test_rule_file_checks(promtool: str, path: Path) -> None:
    assert "SUCCESS" in run(promtool, "check", "rules", path)


@pytest.mark.parametrize("path", prometheus_test_files(), ids=lambda p: p.name)
def test_rule_unit_tests_pass(promtool: str, path: Path) -> None:
    # rule_files are relative to the test file: promtool resolves them so, from any directory.
    assert "SUCCESS" in run(promtool, "test", "rules", path)


def test_grafana_promql_parses(promtool: str, tmp_path: Path) -> None:
    queries = dashboard_promql() + alert_rule_promql()
    assert queries
    rules = [
        {"record": f"grafana:expression:{index}", "expr": grafana_promql_to_prometheus(query.expr)}
        for index, query in enumerate(queries)
    ]
    path = tmp_path / "grafana.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}))
    index = "\n".join(f"rule {i + 1}: {q.where}" for i, q in enumerate(queries))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{index}"


def test_compose_config_checks_with_its_mounts(promtool: str, tmp_path: Path) -> None:
    # Prometheus of deploy/compose sees its files through bind mounts: lay them out as the container does.
    mounts = bind_mounts(compose_service("prometheus"))
    for container, host in mounts.items():
        target = tmp_path / container.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if host.is_dir():
            shutil.copytree(host, target)
        else:
            shutil.copy(host, target)
    output = run(promtool, "check", "config", tmp_path / "etc/prometheus/prometheus.yml")
    assert f"{len(prometheus_rule_files())} rule files found" in output
