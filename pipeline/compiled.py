"""The compiled hot path: the per-event modules built as C extensions by mypyc, loaded in place of their
source only when the build was made from exactly the source beside it.

Why: the worker's main thread spends its time in Python per event (decoding and validating, applying to
the account's state, taking window rows, serializing states). mypyc compiles these typed modules to C
(native classes, direct calls between them), which takes about a fifth off that time (bench/RESULTS.md).
The results never differ: the same source runs either way, and ``tests/unit/test_compiled.py`` runs the same
traffic, poison included, through both and compares every output.

- :func:`build` (``engagement compile``, ``make compiled``) compiles :data:`MODULES` into
  :data:`BUILD_DIR` and writes a manifest of the sources it compiled.
- :func:`activate` runs first thing when :mod:`pipeline` is imported. It puts the build first on the
  package's ``__path__`` only if its manifest names this interpreter's extension suffix and the sha256 of
  every module's source as it is now. Otherwise the source runs, and :data:`STATUS` says why: an edited
  module makes the whole build unused, never half-used.

``ENGAGEMENT_COMPILED`` chooses: ``auto`` (the default: the build when it matches), ``off`` (the source),
``required`` (the build, or ``import pipeline`` fails saying why: what ``make test`` and the benchmarks use,
so that they measure and test what they claim to).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from pipeline.settings import PREFIX, CompiledMode

ENV = f"{PREFIX}COMPILED"  # the setting Settings.compiled, read here before any other
MODES: tuple[str, ...] = get_args(CompiledMode)
# The per-event path, and what it calls per event. Each is plain typed Python: mypy --strict checks it and
# mypyc compiles it unchanged. A class of these may not be subclassed outside them (mypyc native classes).
MODULES = ("events", "decode", "followers", "drops", "account_state", "aggregator", "partitioning")
# The interpreted modules they import: mypyc compiles against their annotations (a compiled call checks its
# arguments' types), so a build is stale when one of these changes too. tests/unit/test_compiled.py checks
# that this is every pipeline module MODULES import, directly or not.
DEPENDENCIES = ("settings", "log_redaction", "state_records", "wire")
PACKAGE_DIR = Path(__file__).resolve().parent
BUILD_DIR = PACKAGE_DIR / "_compiled"
MANIFEST = "manifest.json"
GROUP = "engagement_hot_path"  # mypyc's shared library: <GROUP>__mypyc<suffix>, beside the package dir
FORMAT = 2


class BuildFailed(RuntimeError):
    """mypyc or the C compiler failed; the message holds what they printed. The last build is untouched."""


@dataclass(frozen=True)
class Status:
    """Whether the compiled modules are in use, and why (or why not) in words for logs."""

    active: bool
    reason: str


STATUS = Status(False, "not activated")


def extension_suffix() -> str:
    """This interpreter's file suffix of extension modules (ABI included), e.g. ``.cpython-311-x86_64-linux-gnu.so``."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    return str(suffix)


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check(build_dir: Path = BUILD_DIR, package_dir: Path = PACKAGE_DIR, suffix: str | None = None) -> Status:
    """Whether the build in ``build_dir`` matches the sources in ``package_dir`` and this interpreter.
    Reads files only; never raises for a missing or malformed build (it is then not used)."""
    suffix = extension_suffix() if suffix is None else suffix
    try:
        manifest = json.loads((build_dir / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Status(False, f"no compiled build in {build_dir} (make compiled)")
    except (OSError, ValueError) as exc:
        return Status(False, f"unreadable manifest in {build_dir}: {exc}")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return Status(False, f"manifest in {build_dir} is of another format; rebuild (make compiled)")
    if manifest.get("suffix") != suffix:
        return Status(False, f"built for {manifest.get('suffix')}, this interpreter loads {suffix}; rebuild")
    digests = manifest.get("modules")
    if not isinstance(digests, dict) or set(digests) != set(MODULES):
        return Status(False, "the build holds other modules than pipeline.compiled.MODULES; rebuild")
    dependencies = manifest.get("dependencies")
    if not isinstance(dependencies, dict) or set(dependencies) != set(DEPENDENCIES):
        return Status(False, "the build was made against other modules than pipeline.compiled.DEPENDENCIES; rebuild")
    for module, digest in [*digests.items(), *dependencies.items()]:
        source = package_dir / f"{module}.py"
        if not source.is_file() or source_digest(source) != digest:
            return Status(False, f"pipeline/{module}.py changed since the build; rebuild (make compiled)")
    for module in MODULES:
        if not (build_dir / "pipeline" / f"{module}{suffix}").is_file():
            return Status(False, f"the build lacks pipeline/{module}{suffix}; rebuild")
    if not (build_dir / f"{GROUP}__mypyc{suffix}").is_file():
        return Status(False, f"the build lacks its shared library {GROUP}__mypyc{suffix}; rebuild")
    return Status(True, f"compiled by mypyc {manifest.get('mypy', '?')} in {build_dir}")


def mode(environ: Mapping[str, str] = os.environ) -> str:
    """The ``ENGAGEMENT_COMPILED`` mode. Raises ValueError, naming the choices, for any other value (as
    :class:`~pipeline.settings.Settings` refuses it: exactly one of :data:`MODES`)."""
    value = environ.get(ENV, "auto")
    if value not in MODES:
        raise ValueError(f"{ENV}={value!r}: expected one of {', '.join(MODES)}")
    return value


def activate() -> Status:
    """Use the compiled modules if the build matches (see :func:`check`), by :func:`mode`. Must run before
    any of :data:`MODULES` is imported (``pipeline/__init__.py`` runs it). Raises ImportError in mode
    ``required`` when the build is not usable, and ValueError for an unknown mode."""
    global STATUS
    chosen = mode()
    if chosen == "off":
        STATUS = Status(False, f"off ({ENV}=off)")
        return STATUS
    loaded = [m for m in MODULES if f"pipeline.{m}" in sys.modules]
    status = check()
    if loaded:
        status = Status(False, f"pipeline.{loaded[0]} was imported before pipeline.compiled.activate()")
    if status.active:
        status = _load(status)
    if chosen == "required" and not status.active:
        raise ImportError(f"{ENV}=required, but the compiled hot path is not usable: {status.reason}")
    STATUS = status
    return STATUS


def _load(status: Status, build_dir: Path = BUILD_DIR) -> Status:
    """Load the build's shared library, then put the build first on the package's ``__path__``. A build
    replaced or removed since :func:`check` read it (``make compiled`` in another shell) leaves the source."""
    shared = f"{GROUP}__mypyc"
    path = build_dir / f"{shared}{extension_suffix()}"
    try:
        spec = importlib.util.spec_from_file_location(shared, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"no loader for {path}")
        library = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(library)
    except (ImportError, OSError) as exc:
        return Status(False, f"cannot load {path}: {exc}")
    sys.modules[shared] = library
    sys.modules["pipeline"].__path__.insert(0, str(build_dir / "pipeline"))
    return status


def build(build_dir: Path = BUILD_DIR) -> Status:
    """Compile :data:`MODULES` with mypyc into ``build_dir``. Blocks (about half a minute on two cores); one
    build at a time (a lock file beside ``build_dir``: a second build waits for the first).

    The build happens in a temporary directory; ``build_dir`` is then replaced by two renames, so a running
    process keeps the files it loaded, and a process starting between them finds no build and runs the
    source (or, with ``required``, stops saying so). The manifest is written last. Raises BuildFailed (no C
    compiler, mypy's errors, the compiler's, or the replacement failing) with the last build untouched;
    ImportError if mypy (which carries mypyc) or setuptools is not installed."""
    from mypy.version import __version__ as mypy_version
    from mypyc.build import mypycify
    from setuptools import Distribution

    compiler = (os.environ.get("CC") or str(sysconfig.get_config_var("CC") or "cc")).split()[0]
    if shutil.which(compiler) is None:
        raise BuildFailed(f"no C compiler: {compiler!r} is not on PATH (install gcc, or set CC)")
    root = PACKAGE_DIR.parent
    suffix = extension_suffix()
    with _locked(build_dir), tempfile.TemporaryDirectory(prefix="engagement-mypyc-") as tmp:
        for stage in ("new", "old"):  # directories an interrupted build left behind
            for leftover in build_dir.parent.glob(f"{build_dir.name}.{stage}-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        # The sources as compiled: read first, so that a module edited during the build fails the check below.
        digests = {module: source_digest(PACKAGE_DIR / f"{module}.py") for module in MODULES}
        dependencies = {module: source_digest(PACKAGE_DIR / f"{module}.py") for module in DEPENDENCIES}
        work = Path(tmp)
        previous = Path.cwd()
        os.chdir(root)  # mypy reads its configuration (pyproject.toml) and module names from here
        try:
            extensions = mypycify(
                ["--cache-dir", str(work / "mypy-cache"), *[f"pipeline/{module}.py" for module in MODULES]],
                group_name=GROUP,
                target_dir=str(work / "c"),
                opt_level="3",
            )
            distribution = Distribution({"name": "engagement-hot-path", "ext_modules": extensions})
            command = distribution.get_command_obj("build_ext")
            command.build_lib = str(work / "lib")
            command.build_temp = str(work / "obj")
            distribution.run_command("build_ext")
        except SystemExit as exc:  # mypycify exits on type errors, after printing them
            raise BuildFailed(f"mypyc stopped (exit {exc.code}); its errors are printed above") from exc
        except Exception as exc:  # setuptools' CompileError, LinkError...
            raise BuildFailed(f"compiling the hot path failed: {exc}") from exc
        finally:
            os.chdir(previous)
        built = work / "lib"
        manifest = {
            "format": FORMAT,
            "suffix": suffix,
            "python": sys.version,
            "mypy": mypy_version,
            "modules": digests,
            "dependencies": dependencies,
        }
        (built / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        status = check(built, PACKAGE_DIR, suffix)
        if not status.active:  # a source changed while it compiled, or mypyc laid the files out otherwise
            raise BuildFailed(f"the new build does not match: {status.reason}")
        _replace(build_dir, built)
    return check(build_dir)


def _replace(build_dir: Path, built: Path) -> None:
    """Put a copy of ``built`` at ``build_dir`` by two renames (the last build moved aside, then deleted).
    Raises BuildFailed, with the last build back in its place, if the copy or a rename fails."""
    staged = Path(tempfile.mkdtemp(prefix=f"{build_dir.name}.new-", dir=build_dir.parent))
    retired = staged.with_name(staged.name.replace(".new-", ".old-"))
    try:
        shutil.copytree(built, staged, dirs_exist_ok=True)
        if build_dir.exists():
            build_dir.rename(retired)
        staged.rename(build_dir)
    except OSError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        if retired.exists() and not build_dir.exists():
            retired.rename(build_dir)
        raise BuildFailed(f"could not put the new build in place at {build_dir}: {exc}") from exc
    shutil.rmtree(retired, ignore_errors=True)


@contextlib.contextmanager
def _locked(build_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<build_dir>.lock`` (blocks until a build in another process is done)."""
    with open(build_dir.with_name(f"{build_dir.name}.lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
