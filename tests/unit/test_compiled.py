"""The compiled hot path (pipeline/compiled.py): a build is used only when it matches the source and this
interpreter, ENGAGEMENT_COMPILED chooses, and the compiled modules give exactly the source's results."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline import compiled
from pipeline.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = ".cpython-test.so"


def fake_build(tmp_path: Path, package_dir: Path = compiled.PACKAGE_DIR, **manifest: Any) -> Path:
    """A build directory as :func:`compiled.build` lays it out (empty library files), for the real sources."""
    build = tmp_path / "_compiled"
    (build / "pipeline").mkdir(parents=True)
    for module in compiled.MODULES:
        (build / "pipeline" / f"{module}{SUFFIX}").write_bytes(b"")
    (build / f"{compiled.GROUP}__mypyc{SUFFIX}").write_bytes(b"")
    written = {
        "format": compiled.FORMAT,
        "suffix": SUFFIX,
        "mypy": "2.4.1",
        "modules": {m: compiled.source_digest(package_dir / f"{m}.py") for m in compiled.MODULES},
        "dependencies": {m: compiled.source_digest(package_dir / f"{m}.py") for m in compiled.DEPENDENCIES},
        **manifest,
    }
    (build / compiled.MANIFEST).write_text(json.dumps(written), encoding="utf-8")
    return build


def test_a_build_of_the_current_sources_for_this_interpreter_is_used(tmp_path: Path) -> None:
    status = compiled.check(fake_build(tmp_path), suffix=SUFFIX)
    assert status.active and "mypyc 2.4.1" in status.reason


def test_no_build_means_the_source_runs(tmp_path: Path) -> None:
    status = compiled.check(tmp_path / "absent", suffix=SUFFIX)
    assert not status.active and "no compiled build" in status.reason


@pytest.mark.parametrize("edited", ["aggregator", "settings"])
def test_an_edited_module_makes_the_whole_build_unused(tmp_path: Path, edited: str) -> None:
    """A compiled module, or an interpreted one they were compiled against (its annotations are checked by
    the compiled calls)."""
    package = tmp_path / "package"
    package.mkdir()
    for module in (*compiled.MODULES, *compiled.DEPENDENCIES):
        (package / f"{module}.py").write_bytes((compiled.PACKAGE_DIR / f"{module}.py").read_bytes())
    build = fake_build(tmp_path, package)
    assert compiled.check(build, package, SUFFIX).active
    with (package / f"{edited}.py").open("a", encoding="utf-8") as source:
        source.write("# edited\n")
    status = compiled.check(build, package, SUFFIX)
    assert not status.active and f"pipeline/{edited}.py changed" in status.reason


def pipeline_imports(module: str) -> set[str]:
    tree = ast.parse((compiled.PACKAGE_DIR / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline.")}
    return found


def test_the_dependencies_are_every_pipeline_module_the_compiled_ones_import() -> None:
    seen: set[str] = set()
    todo = list(compiled.MODULES)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(pipeline_imports(module))
    assert seen - set(compiled.MODULES) == set(compiled.DEPENDENCIES)


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [
        ({"suffix": ".cpython-312-x86_64-linux-gnu.so"}, "built for .cpython-312"),
        ({"format": 0}, "another format"),
        ({"modules": {"decode": "0" * 64}}, "other modules"),
        ({"dependencies": {}}, "against other modules"),
    ],
)
def test_a_build_for_something_else_is_not_used(tmp_path: Path, manifest: dict[str, Any], reason: str) -> None:
    status = compiled.check(fake_build(tmp_path, **manifest), suffix=SUFFIX)
    assert not status.active and reason in status.reason


def test_a_build_missing_a_library_or_with_a_broken_manifest_is_not_used(tmp_path: Path) -> None:
    build = fake_build(tmp_path)
    (build / "pipeline" / f"decode{SUFFIX}").unlink()
    assert "lacks pipeline/decode" in compiled.check(build, suffix=SUFFIX).reason
    build = fake_build(tmp_path / "2")
    (build / f"{compiled.GROUP}__mypyc{SUFFIX}").unlink()
    assert "shared library" in compiled.check(build, suffix=SUFFIX).reason
    (build / compiled.MANIFEST).write_text("{not json", encoding="utf-8")
    status = compiled.check(build, suffix=SUFFIX)
    assert not status.active and "unreadable manifest" in status.reason


def test_a_library_that_does_not_load_leaves_the_source(tmp_path: Path) -> None:
    """A build replaced between the check and the load (or a broken file): the source runs, nothing changed."""
    import pipeline

    build = tmp_path / "_compiled"
    build.mkdir()
    (build / f"{compiled.GROUP}__mypyc{compiled.extension_suffix()}").write_bytes(b"not a shared library")
    path_before, modules_before = list(pipeline.__path__), set(sys.modules)
    status = compiled._load(compiled.Status(True, "checked"), build)
    assert not status.active and "cannot load" in status.reason
    assert list(pipeline.__path__) == path_before and set(sys.modules) == modules_before


def test_the_mode_is_read_from_the_environment() -> None:
    assert compiled.mode({}) == "auto"
    assert compiled.mode({compiled.ENV: "required"}) == "required"
    assert compiled.mode({compiled.ENV: "off"}) == "off"
    # a setting too: checked with the others, named in `engagement config show`
    assert Settings.from_env({compiled.ENV: "required"}).compiled == "required"
    for wrong in ("yes", "Required", " required ", ""):  # refused alike, at import and by the settings
        with pytest.raises(ValueError, match="expected one of auto, off, required"):
            compiled.mode({compiled.ENV: wrong})
        with pytest.raises(SettingsError, match="ENGAGEMENT_COMPILED must be 'auto', 'off' or 'required'"):
            Settings.from_env({compiled.ENV: wrong})
    # a child process (a worker spawned with settings.to_env() over this environment) inherits the choice
    assert compiled.ENV not in Settings.from_env({compiled.ENV: "off"}).to_env()


def python(code: str, mode: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, compiled.ENV: mode}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_off_runs_the_source_and_an_unknown_mode_stops_the_import() -> None:
    done = python("import pipeline.aggregator as a, pipeline.compiled as c; print(a.__file__, c.STATUS.active)", "off")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(compiled.PACKAGE_DIR / "aggregator.py"), "False"]
    done = python("import pipeline", "fast")
    assert done.returncode != 0 and "ENGAGEMENT_COMPILED='fast': expected one of" in done.stderr


def test_no_c_compiler_fails_the_build_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "no-such-compiler-here")
    build = fake_build(tmp_path)
    with pytest.raises(compiled.BuildFailed, match="no C compiler: 'no-such-compiler-here' is not on PATH"):
        compiled.build(build)
    assert compiled.check(build, suffix=SUFFIX).active


def test_a_failed_build_leaves_the_last_one_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mypyc.build

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise SystemExit(1)  # as mypycify does after printing type errors

    monkeypatch.setattr(mypyc.build, "mypycify", refuse)
    build = fake_build(tmp_path)
    before = sorted(p.relative_to(build) for p in build.rglob("*"))
    cwd = Path.cwd()
    with pytest.raises(compiled.BuildFailed, match="mypyc stopped"):
        compiled.build(build)
    assert sorted(p.relative_to(build) for p in build.rglob("*")) == before
    assert Path.cwd() == cwd  # the build runs mypy from the repository root, then comes back


def test_a_build_outside_the_repository_compiles_and_is_used(tmp_path: Path) -> None:
    """As after `pip install '.[compiled]'` (no pyproject.toml beside the package): `engagement compile`'s
    build, into the installed package, leaving nothing else there; then `required` imports it."""
    site = tmp_path / "site"
    shutil.copytree(compiled.PACKAGE_DIR, site / "pipeline", ignore=shutil.ignore_patterns("_compiled*", "__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(site), compiled.ENV: "off"}
    code = "from pipeline import compiled; print(compiled.build().active)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.split()[-1] == "True", done.stderr[-3000:]
    assert sorted(p.name for p in site.iterdir()) == ["pipeline"]  # no mypy cache, no build directory left
    code = "import pipeline.aggregator as a; print(a.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**env, compiled.ENV: "required"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(
        site / "pipeline" / "_compiled" / "pipeline" / f"aggregator{compiled.extension_suffix()}"
    )


def test_a_new_build_replaces_the_last_or_leaves_it_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    last = fake_build(tmp_path / "last")
    new = tmp_path / "new"
    (new / "pipeline").mkdir(parents=True)
    (new / compiled.MANIFEST).write_text("{}", encoding="utf-8")
    real_rename = Path.rename

    def failing_second_rename(self: Path, target: Any) -> Any:
        if ".new-" in self.name:  # the new build into place
            raise OSError("disk full")
        return real_rename(self, target)

    before = sorted(p.relative_to(last) for p in last.rglob("*"))
    monkeypatch.setattr(Path, "rename", failing_second_rename)
    with pytest.raises(compiled.BuildFailed, match=r"could not put the new build in place.*disk full"):
        compiled._replace(last, new)
    assert sorted(p.relative_to(last) for p in last.rglob("*")) == before  # the last build, back
    assert sorted(p.name for p in last.parent.iterdir()) == ["_compiled"]  # nothing staged left
    monkeypatch.setattr(Path, "rename", real_rename)
    compiled._replace(last, new)
    assert sorted(p.relative_to(last) for p in last.rglob("*")) == [Path(compiled.MANIFEST), Path("pipeline")]
    assert sorted(p.name for p in last.parent.iterdir()) == ["_compiled"]


needs_build = pytest.mark.skipif(not compiled.check().active, reason="no compiled build matches (make compiled)")


@needs_build
def test_required_loads_every_module_from_the_build() -> None:
    code = "import importlib, pipeline.compiled as c; print(*[importlib.import_module(f'pipeline.{m}').__file__"
    code += " for m in c.MODULES])"
    done = python(code, "required")
    assert done.returncode == 0, done.stderr
    files = [Path(f) for f in done.stdout.split()]
    assert files == [compiled.BUILD_DIR / "pipeline" / f"{m}{compiled.extension_suffix()}" for m in compiled.MODULES]


@needs_build
def test_the_classes_built_per_account_and_window_have_compiled_constructors() -> None:
    """A dataclass's generated ``__init__`` is interpreted Python even in the build (6 % of a draining
    worker's main thread, until these wrote theirs out)."""
    code = "import inspect, pipeline.account_state as a, pipeline.followers as f\n"
    code += (
        "print(*[inspect.isfunction(c.__init__) for c in (a.AccountState, a.WindowCounts, a.Fresh, f.FollowerLedger)])"
    )
    done = python(code, "required")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"] * 4


@needs_build
def test_the_compiled_hot_path_gives_exactly_the_results_of_the_source() -> None:
    """The same poisoned stream (tests/compiled_probe.py) through both: every row, message, changelog record
    and count equal."""
    results = {}
    for mode in ("off", "required"):
        done = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "compiled_probe.py")],
            env={**os.environ, compiled.ENV: mode},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        results[mode] = json.loads(done.stdout)
    source, built = results["off"], results["required"]
    assert (source.pop("compiled"), built.pop("compiled")) == (False, True)
    assert built == source
    # and the stream reached every part of the path
    counts = source["counts"]
    for outcome in ("counted", "duplicate", "late", "pending", "replayed", "self", "unmatched"):
        assert counts[f"engagement_event_outcomes_total[('outcome', '{outcome}')]"] > 0, outcome
    # 1 engager over 2**53 + 2 followers, rounded once as CPython divides integers (a double division of
    # the converted operands gives 0x1.0000000000000p-53)
    assert source["big_account_rates"] == [(1 / 9_007_199_254_740_993).hex()] == ["0x1.fffffffffffffp-54"]
    assert sum(n for name, n in counts.items() if name.startswith("engagement_dead_letters_total")) >= 40
    assert source["rows"]["engagement_windows"] > 1000 and source["rows"]["engagement_alerts"] > 0
    assert source["sent"]["engagement-rekeyed"] > 0
