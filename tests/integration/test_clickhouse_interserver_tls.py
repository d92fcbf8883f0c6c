"""The TLS between the ClickHouse servers of deploy/k8s, on a real server (18.16): the installation's
openssl.xml (its files' paths pointed at local copies) and a cluster written as the operator writes a
`secure` one. A distributed query reaches a server whose certificate the pipeline's CA signed, and is
refused by a server whose certificate another CA signed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.processes import free_port, spawn, stop, wait_for_port
from pipeline.settings import Settings
from pipeline.warehouse import WarehouseError, open_warehouse
from tests.conftest import SERVER_SCRIPT
from tests.deploy_files import K8S
from tests.deploy_manifests import mounted_files, yaml_documents
from tests.tls import make_tls

pytestmark = pytest.mark.integration


def installation_openssl_xml(local: dict[str, Path]) -> str:
    """deploy/k8s's openssl.xml, as it is, with each file the operator mounts replaced by ``local[file name]``."""
    (chi,) = [d for d in yaml_documents(K8S / "base" / "clickhouse.yaml") if d["kind"] == "ClickHouseInstallation"]
    configuration = chi["spec"]["configuration"]
    xml: str = configuration["files"]["openssl.xml"]
    for name, path in mounted_files(configuration).items():
        assert path in xml, f"openssl.xml does not read {name}"
        xml = xml.replace(path, str(local[name]))
    assert "/etc/clickhouse-server" not in xml, "openssl.xml reads a file the test does not provide"
    return xml


def secure_cluster(name: str, port: int) -> str:
    """A remote_servers cluster of one server, as the operator writes the replicas of a `secure` cluster."""
    return (
        f"<{name}><shard><replica><host>127.0.0.1</host><port>{port}</port><secure>1</secure>"
        f"</replica></shard></{name}>"
    )


@pytest.fixture()
def server_with_installation_tls(
    clickhouse_tls_server: tuple[int, int, Path], tmp_path: Path
) -> Iterator[tuple[int, int, Path]]:
    """A server with the installation's openssl.xml and two secure clusters: `ours`, its own TLS port
    (a certificate of its CA), and `foreign`, the session's TLS server (a certificate of another CA).
    Yields its plain port, the foreign server's TLS port and the server's error log."""
    files = make_tls(tmp_path / "tls", prefix="pipeline ")  # a CA named unlike the foreign one
    directory = tmp_path / "server"
    (directory / "config.d").mkdir(parents=True)
    local = {"server.crt": files.cert, "server.key": files.key, "ca.crt": files.ca}
    (directory / "config.d" / "openssl.xml").write_text(installation_openssl_xml(local), encoding="utf-8")
    port, secure = free_port(), free_port()
    _, foreign, _ = clickhouse_tls_server
    clusters = secure_cluster("ours", secure) + secure_cluster("foreign", foreign)
    remote_servers = f"<yandex><remote_servers>{clusters}</remote_servers></yandex>"
    (directory / "config.d" / "clusters.xml").write_text(remote_servers, encoding="utf-8")
    command = [str(SERVER_SCRIPT), "start", str(directory), str(port), str(secure), str(files.cert), str(files.key)]
    process = spawn(command, log_path=directory / "stdout.log")
    try:
        wait_for_port("127.0.0.1", secure, 60, process)
        yield port, foreign, directory / "error.log"
    finally:
        stop(process, timeout=30)


def test_servers_check_each_others_certificate_against_the_pipelines_ca(
    server_with_installation_tls: tuple[int, int, Path], tmp_path: Path
) -> None:
    port, foreign, error_log = server_with_installation_tls
    settings = Settings.from_env(
        {}, warehouse="server", clickhouse_port=port, clickhouse_database="default", data_dir=tmp_path
    )
    warehouse = open_warehouse(settings)
    try:
        for cluster in ("ours", "foreign"):
            engine = f"Distributed({cluster}, system, one)"
            warehouse.execute(f"CREATE TABLE default.one_{cluster} AS system.one ENGINE = {engine}")
        # Over TLS to a server whose certificate the CA of ca.crt signed: verified, answered.
        assert warehouse.query("SELECT count() FROM default.one_ours").rows == [(1,)]
        # The same query to a server of another CA: the handshake is refused (the server logs why; its
        # client sees "All connection tries failed").
        with pytest.raises(WarehouseError):
            warehouse.query("SELECT count() FROM default.one_foreign")
        assert f"certificate verify failed (127.0.0.1:{foreign})" in error_log.read_text(errors="replace")
    finally:
        warehouse.close()
