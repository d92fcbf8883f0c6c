"""How every Kafka client of the pipeline connects: TLS and SASL from the settings, in one place.

- :func:`kafka_python_config` gives the keyword arguments of kafka-python's producers, consumers and admin
  clients (ingest, generator, demo, replay, topic creation); :func:`faust_credentials` gives the Faust
  app's ``broker_credentials`` (the worker's aiokafka consumer and producer).
- :func:`check_credentials` logs in once with a raw connection (TLS handshake, SASL handshake and
  authentication) and raises :class:`KafkaAuthError` within ``ENGAGEMENT_KAFKA_AUTH_TIMEOUT_SECONDS`` when
  the broker refuses: the clients themselves retry a refused login until their own (long) timeouts and
  report only "unable to bootstrap". The worker, ``ingest``, ``generate`` and ``demo`` call it first.

No message or exception raised here contains the password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
import time
from typing import Any

from pipeline.settings import Settings

SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
CLIENT_ID = b"engagement-auth-check"
DEFAULT_PORT = 9092
_HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}


class KafkaAuthError(RuntimeError):
    """The broker refused the TLS connection or the SASL login; the message says which and why."""


def uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The client TLS context (CA file, client certificate, hostname check), or None without TLS."""
    if not uses_tls(settings):
        return None
    context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    context.check_hostname = settings.kafka_ssl_check_hostname
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile or None)
    return context


def kafka_python_config(settings: Settings) -> dict[str, Any]:
    """``bootstrap_servers`` and the security keyword arguments for any kafka-python client."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        config["ssl_context"] = context
    if uses_sasl(settings):
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        config["sasl_plain_password"] = settings.kafka_sasl_password.reveal()
    return config


def faust_credentials(settings: Settings) -> Any:
    """The Faust app's ``broker_credentials``: SASL (with TLS for SASL_SSL), TLS alone, or None."""
    import faust

    context = ssl_context(settings)
    if uses_sasl(settings):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.reveal(),
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def check_credentials(settings: Settings) -> None:
    """Log in once to the first bootstrap server as the clients will; return when the broker accepted.

    Raises :class:`KafkaAuthError` when the TLS handshake or the SASL login is refused, or when no answer
    came within ``kafka_auth_timeout_seconds``. Without TLS and SASL there is nothing to check. A broker
    that cannot be reached at all is left to the clients (they wait for it to come up).
    """
    if not uses_tls(settings) and not uses_sasl(settings):
        return
    host, port = bootstrap_address(settings.bootstrap_servers.split(",")[0])
    where = f"Kafka at {host}:{port}"
    timeout = settings.kafka_auth_timeout_seconds
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return
    sock: socket.socket = raw
    try:
        context = ssl_context(settings)
        if context is not None:
            try:
                sock = context.wrap_socket(raw, server_hostname=host)  # raw is detached into sock
            except (ssl.SSLError, ssl.CertificateError) as exc:
                raise KafkaAuthError(f"TLS handshake with {where} failed: {exc}") from None
        if uses_sasl(settings):
            _sasl_login(_Connection(sock, time.monotonic() + timeout, where), settings, where)
    except TimeoutError as exc:
        raise KafkaAuthError(f"{where} did not answer the login within {timeout:g}s") from exc
    except (OSError, EOFError, struct.error) as exc:
        stage = "the SASL handshake (is the mechanism enabled on the broker?)" if uses_sasl(settings) else "TLS"
        raise KafkaAuthError(
            f"Kafka authentication failed: {where} closed the connection during {stage}: {type(exc).__name__}"
        ) from None
    except ValueError as exc:  # undecodable names, numbers or base64 in the broker's answers
        raise KafkaAuthError(
            f"Kafka authentication failed: {where} sent a malformed answer: {type(exc).__name__}"
        ) from None
    finally:
        sock.close()
        raw.close()


def bootstrap_address(server: str) -> tuple[str, int]:
    """(host, port) of one ``host[:port]`` or ``[ipv6][:port]`` bootstrap server; the port defaults to 9092.

    Raises :class:`KafkaAuthError` when the port is not a number.
    """
    server = server.strip()
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        has_port, port = rest.startswith(":"), rest[1:]
    elif server.count(":") == 1:
        host, _, port = server.partition(":")
        has_port = True
    else:
        host, has_port, port = server, False, ""  # a name, or a bare IPv6 address
    if not has_port:
        return host, DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise KafkaAuthError(f"the bootstrap server {server!r} has no valid port (HOST:PORT)")
    return host, int(port)


class _Connection:
    """Kafka request/response framing (non-flexible versions) on a socket, with one overall deadline."""

    def __init__(self, sock: socket.socket, deadline: float, where: str) -> None:
        self.sock = sock
        self.deadline = deadline
        self.where = where
        self.correlation = 0

    def request(self, api_key: int, version: int, body: bytes) -> bytes:
        self.correlation += 1
        header = struct.pack(">hhih", api_key, version, self.correlation, len(CLIENT_ID)) + CLIENT_ID
        payload = header + body
        self.sock.settimeout(max(0.01, self.deadline - time.monotonic()))
        self.sock.sendall(struct.pack(">i", len(payload)) + payload)
        (size,) = struct.unpack(">i", self._read(4))
        response = self._read(size)
        return response[4:]  # after the correlation id

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self.sock.settimeout(max(0.01, self.deadline - time.monotonic()))
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _sasl_login(conn: _Connection, settings: Settings, where: str) -> None:
    mechanism = settings.kafka_sasl_mechanism
    user = settings.kafka_sasl_username
    refused = f"Kafka SASL authentication failed: {where} refused user {user!r} ({mechanism})"
    response = conn.request(SASL_HANDSHAKE, 1, _string(mechanism))
    error, count = struct.unpack(">hi", response[:6])
    offered, rest = [], response[6:]
    for _ in range(max(count, 0)):
        (length,) = struct.unpack(">h", rest[:2])
        offered.append(rest[2 : 2 + length].decode(errors="replace"))
        rest = rest[2 + length :]
    if error != 0:
        raise KafkaAuthError(f"{refused}: the broker does not offer {mechanism} (it offers {', '.join(offered)})")
    password = settings.kafka_sasl_password.reveal()
    if mechanism == "PLAIN":
        _authenticate(conn, f"\0{user}\0{password}".encode(), refused)
        return
    scram = _Scram(user, password, mechanism)
    server_first = _authenticate(conn, scram.first(), refused)
    server_final = _authenticate(conn, scram.final(server_first, refused), refused)
    scram.verify(server_final, refused)


def _authenticate(conn: _Connection, auth_bytes: bytes, refused: str) -> bytes:
    response = conn.request(SASL_AUTHENTICATE, 1, struct.pack(">i", len(auth_bytes)) + auth_bytes)
    (error,) = struct.unpack(">h", response[:2])
    (length,) = struct.unpack(">h", response[2:4])
    message = response[4 : 4 + length].decode(errors="replace") if length > 0 else ""
    rest = response[4 + max(length, 0) :]
    (size,) = struct.unpack(">i", rest[:4])
    if error != 0:
        raise KafkaAuthError(f"{refused}: {message or f'error code {error}'}")
    return rest[4 : 4 + max(size, 0)]


class _Scram:
    """The client side of SCRAM (RFC 5802) with SHA-256 or SHA-512."""

    def __init__(self, user: str, password: str, mechanism: str, nonce: str | None = None) -> None:
        self.hash = _HASHES[mechanism]
        self.user = user.replace("=", "=3D").replace(",", "=2C")
        self.password = password.encode()
        self.nonce = nonce or base64.b64encode(os.urandom(18)).decode()
        self.client_first_bare = f"n={self.user},r={self.nonce}"
        self.server_signature = b""

    def first(self) -> bytes:
        return f"n,,{self.client_first_bare}".encode()

    def final(self, server_first: bytes, refused: str) -> bytes:
        fields = _fields(server_first, refused)
        if not fields.get("r", "").startswith(self.nonce) or "s" not in fields or "i" not in fields:
            raise KafkaAuthError(f"{refused}: unexpected server message")
        try:
            salt, iterations = base64.b64decode(fields["s"], validate=True), int(fields["i"])
        except ValueError:  # binascii.Error included
            raise KafkaAuthError(f"{refused}: unexpected server message (salt or iteration count)") from None
        if iterations < 1:
            raise KafkaAuthError(f"{refused}: unexpected server message (iteration count)")
        salted = hashlib.pbkdf2_hmac(self.hash().name, self.password, salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", self.hash)
        stored_key = self.hash(client_key).digest()
        without_proof = f"c=biws,r={fields['r']}"
        auth_message = f"{self.client_first_bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, self.hash)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", self.hash)
        self.server_signature = hmac.digest(server_key, auth_message, self.hash)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes, refused: str) -> None:
        fields = _fields(server_final, refused)
        try:
            signature = base64.b64decode(fields.get("v", ""), validate=True)
        except ValueError:  # binascii.Error included
            signature = b""
        if not signature or not hmac.compare_digest(signature, self.server_signature):
            raise KafkaAuthError(f"{refused}: the broker's signature does not match")


def _fields(message: bytes, refused: str) -> dict[str, str]:
    fields = dict(part.split("=", 1) for part in message.decode(errors="replace").split(",") if "=" in part)
    if "e" in fields:  # a SCRAM error (RFC 5802 server-error), e.g. unknown-user or invalid-proof
        raise KafkaAuthError(f"{refused}: {fields['e']}")
    return fields
