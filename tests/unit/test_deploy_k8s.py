"""deploy/k8s: every manifest parses and belongs to a kustomization; the overlays render with kubectl's
kustomize; the core objects validate against Kubernetes' schemas (kubernetes-validate, strict); the operator
objects (Strimzi, Altinity, Prometheus operator) hold what the pipeline needs: every pipeline topic with the
workers' partition count, no more workers than partitions, a 2 x 2 ClickHouse cluster with its users, probes
and scraping on the worker's port, and only real settings. The security wiring: Kafka only over TLS with
SCRAM-SHA-512, the workers' KafkaUser with ACLs on exactly the topics and group they use, its password and the
cluster CA read from the Secrets Strimzi makes; every Secret key referenced exists; ClickHouse users with
GRANTs a current ClickHouse accepts, from the pod network only; NetworkPolicies admitting only the pods that
need each port, and letting each pod reach only what it uses (egress)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from xml.etree import ElementTree

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from pipeline.events import ALERTS_TOPIC, DEAD_LETTER_TOPIC, REKEY_TOPIC
from pipeline.kafka_admin import consumed_topics, pipeline_topics
from pipeline.settings import PREFIX, Settings
from pipeline.worker import create_app, internal_topics
from tests.deploy_files import K8S, PROMETHEUS, k8s_manifest_files, kustomization_files, load
from tests.deploy_manifests import (
    check_config_grants,
    kustomize_references,
    mounted_files,
    objects,
    one,
    overlays,
    pod_specs,
    render,
    yaml_documents,
)

SETTINGS = {PREFIX + name.upper() for name in Settings.__dataclass_fields__}
BASE = K8S / "base"
TARGETS = [BASE, *overlays()]
OPERATOR_GROUPS = ("kafka.strimzi.io/", "clickhouse.altinity.com/", "clickhouse-keeper.altinity.com/")
OPERATOR_GROUPS += ("monitoring.coreos.com/", "cert-manager.io/")
PRODUCTION = K8S / "overlays" / "production"

Rendered = tuple[dict[str, Any], ...]


def target_id(path: Path) -> str:
    return str(path.relative_to(K8S))


def worker_settings(rendered: Rendered) -> Settings:
    return Settings.from_env(one(rendered, "ConfigMap", "engagement-worker")["data"])


def topics_by_name(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {t["spec"].get("topicName", t["metadata"]["name"]): t for t in objects(rendered, "KafkaTopic")}


def broker_count(rendered: Rendered) -> int:
    pools = objects(rendered, "KafkaNodePool")
    return sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])


def test_there_is_a_dev_and_a_production_overlay() -> None:
    assert [p.name for p in overlays()] == ["dev", "production"]


@pytest.mark.parametrize("path", k8s_manifest_files() + kustomization_files(), ids=lambda p: target_id(p))
def test_every_file_parses_to_objects(path: Path) -> None:
    documents = yaml_documents(path)
    assert documents
    for document in documents:
        assert document["apiVersion"] and document["kind"]
        assert document["kind"] == "Kustomization" or document["metadata"]["name"]


def test_every_manifest_is_referenced_and_every_reference_exists() -> None:
    referenced: set[Path] = set()
    for kustomization in kustomization_files():
        for path in kustomize_references(kustomization):
            assert path.exists(), f"{kustomization}: {path} does not exist"
            if path.is_dir():
                assert (path / "kustomization.yaml").is_file(), path
            referenced.add(path)
    assert set(k8s_manifest_files()) <= referenced


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
def test_core_objects_validate_against_the_kubernetes_schemas(target: Path) -> None:
    version = latest_version()
    core = [o for o in render(target) if not o["apiVersion"].startswith(OPERATOR_GROUPS)]
    kinds = {"Namespace", "ConfigMap", "Secret", "Deployment", "Job", "Service", "NetworkPolicy"}
    assert {o["kind"] for o in core} >= kinds
    for o in core:
        kubernetes_validate.validate(o, version, strict=True)  # raises ValidationError with the path


def test_validation_catches_a_wrong_field() -> None:
    deployment = dict(one(render(BASE), "Deployment", "engagement-worker"))
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, latest_version(), strict=True)


def test_internal_topics_are_the_topics_faust_creates() -> None:
    settings = Settings(app_id="engagement-test", partitions=6)
    app, _processor = create_app(settings, warehouse=object())  # type: ignore[arg-type]
    (table,) = app.tables.values()
    leader = app._leader_assignor._leader_topic  # type: ignore[attr-defined]
    created = {table.changelog_topic.get_topic_name(): table.partitions, leader.get_topic_name(): leader.partitions}
    assert internal_topics(settings) == created


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
def test_kafka_kraft_and_every_pipeline_topic_with_the_workers_partitions(target: Path) -> None:
    rendered = render(target)
    kafka = one(rendered, "Kafka")
    assert kafka["apiVersion"] == "kafka.strimzi.io/v1beta2"
    assert kafka["metadata"]["annotations"] == {"strimzi.io/node-pools": "enabled", "strimzi.io/kraft": "enabled"}
    cluster = kafka["metadata"]["name"]
    roles = {role for pool in objects(rendered, "KafkaNodePool") for role in pool["spec"]["roles"]}
    assert roles == {"controller", "broker"}
    for o in objects(rendered, "KafkaNodePool") + objects(rendered, "KafkaTopic"):
        assert o["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert o["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    settings = worker_settings(rendered)
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert settings.bootstrap_servers == f"{cluster}-kafka-bootstrap:{listener['port']}"
    expected = {name: settings.partitions for name in pipeline_topics(settings)} | internal_topics(settings)
    topics = topics_by_name(rendered)
    assert {name: t["spec"]["partitions"] for name, t in topics.items()} == expected
    brokers = broker_count(rendered)
    assert settings.replication_factor <= brokers
    for name, topic in topics.items():
        replicas = topic["spec"]["replicas"]
        assert replicas <= brokers, name
        assert int(topic["spec"]["config"]["min.insync.replicas"]) <= max(1, replicas - 1), name
    assert kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False
    changelog = next(name for name in internal_topics(settings) if name.endswith("-changelog"))
    assert topics[changelog]["spec"]["config"]["cleanup.policy"] == "compact"


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
def test_no_more_workers_than_partitions(target: Path) -> None:
    rendered = render(target)
    settings = worker_settings(rendered)
    replicas = one(rendered, "Deployment", "engagement-worker")["spec"]["replicas"]
    assert 1 <= replicas <= settings.partitions
    assert settings.partitions >= 8


def test_production_sizes() -> None:
    rendered = render(PRODUCTION)
    assert worker_settings(rendered).partitions == 24
    assert broker_count(rendered) >= 3
    assert all(t["spec"]["replicas"] == 3 for t in objects(rendered, "KafkaTopic"))
    assert not one(rendered, "Deployment", "engagement-worker")["spec"]["template"]["spec"]["containers"][0][
        "image"
    ].startswith("engagement-worker:")  # a registry, not the local build


@pytest.mark.parametrize("target", [BASE, PRODUCTION], ids=target_id)
def test_clickhouse_two_shards_by_two_replicas_on_keeper(target: Path) -> None:
    rendered = render(target)
    chi = one(rendered, "ClickHouseInstallation")
    assert chi["apiVersion"] == "clickhouse.altinity.com/v1"
    (cluster,) = chi["spec"]["configuration"]["clusters"]
    assert cluster["layout"] == {"shardsCount": 2, "replicasCount": 2}
    keeper = one(rendered, "ClickHouseKeeperInstallation")
    assert keeper["apiVersion"] == "clickhouse-keeper.altinity.com/v1"
    assert keeper["spec"]["configuration"]["clusters"][0]["layout"]["replicasCount"] == 3
    (node,) = chi["spec"]["configuration"]["zookeeper"]["nodes"]
    assert node == {"host": f"keeper-{keeper['metadata']['name']}", "port": 2181}


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
def test_clickhouse_users_and_the_workers_connection(target: Path) -> None:
    rendered = render(target)
    chi = one(rendered, "ClickHouseInstallation")
    configuration = chi["spec"]["configuration"]
    settings = worker_settings(rendered)
    data = one(rendered, "ConfigMap", "engagement-worker")["data"]
    assert settings.warehouse == "server"
    assert settings.clickhouse_host == f"clickhouse-{chi['metadata']['name']}"
    assert data["ENGAGEMENT_CLICKHOUSE_CLUSTER"] == configuration["clusters"][0]["name"]
    users = configuration["users"]
    assert users[f"{settings.clickhouse_user}/profile"] == "default"
    assert users["grafana/profile"] == "grafana" and configuration["profiles"]["grafana/readonly"] == 2
    secret = one(rendered, "Secret", "engagement-clickhouse")
    for user in (settings.clickhouse_user, "grafana"):
        reference = users[f"{user}/password"]["valueFrom"]["secretKeyRef"]
        assert reference["name"] == secret["metadata"]["name"] and reference["key"] in secret["stringData"]
    for value in secret["stringData"].values():
        assert value.startswith("CHANGE-ME"), "only placeholders are committed"
    # The workers log in as that user with the same key of the Secret.
    for _where, spec in pod_specs(rendered):
        for container in spec["containers"]:
            (password,) = [e for e in container["env"] if e["name"] == "ENGAGEMENT_CLICKHOUSE_PASSWORD"]
            assert password["valueFrom"] == users[f"{settings.clickhouse_user}/password"]["valueFrom"]


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
def test_workloads_use_real_settings_resources_and_a_non_root_user(target: Path) -> None:
    rendered = render(target)
    configmaps = {c["metadata"]["name"]: c for c in objects(rendered, "ConfigMap")}
    for _where, spec in pod_specs(rendered):
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] >= 1000
        for container in spec["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            for source in container.get("envFrom", []):
                names |= set(configmaps[source["configMapRef"]["name"]]["data"])
            assert names and not (names - SETTINGS), names - SETTINGS
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    workers = one(rendered, "Deployment", "engagement-worker")["spec"]["template"]["spec"]["containers"]
    migrate = one(rendered, "Job", "engagement-migrate")["spec"]["template"]["spec"]["containers"]
    assert workers[0]["args"] == ["worker"] and migrate[0]["args"] == ["migrate"]
    assert workers[0]["image"] == migrate[0]["image"]


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
def test_probes_service_and_scraping_on_the_workers_port(target: Path) -> None:
    rendered = render(target)
    settings = worker_settings(rendered)
    assert settings.web_host == "0.0.0.0" and settings.web_port == Settings().web_port
    deployment = one(rendered, "Deployment", "engagement-worker")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] == "/healthz", probe
        assert ports.get(check["port"], check["port"]) == settings.web_port, probe
    # A tripped worker answers 503 while it lingers for the scrape: readiness takes it out, liveness must not
    # kill it first.
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > settings.dead_letter_brake_linger_seconds
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdb = one(rendered, "PodDisruptionBudget", "engagement-worker")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    service = one(rendered, "Service", "engagement-worker")
    assert service["spec"]["selector"].items() <= labels.items()
    (service_port,) = service["spec"]["ports"]
    assert ports[service_port["targetPort"]] == settings.web_port
    monitor = one(rendered, "ServiceMonitor", "engagement-worker")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"] and endpoint["path"] == "/metrics"
    # The job the rules and dashboards select (up{job="engagement"}), as in deploy/prometheus/prometheus.yml.
    jobs = {job["job_name"] for job in load(PROMETHEUS / "prometheus.yml")["scrape_configs"]}
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] in jobs


# ---------------------------------------------------------------------------------------------------- security


def pod_labels(rendered: Rendered, kind: str, name: str) -> dict[str, str]:
    labels: dict[str, str] = one(rendered, kind, name)["spec"]["template"]["metadata"]["labels"]
    return labels


def clickhouse_pod_labels(rendered: Rendered) -> dict[str, str]:
    """The labels the Altinity operator puts on the pods of the ClickHouseInstallation."""
    return {"clickhouse.altinity.com/chi": one(rendered, "ClickHouseInstallation")["metadata"]["name"]}


def keeper_pod_labels(rendered: Rendered) -> dict[str, str]:
    """The labels the Altinity operator puts on the pods of the ClickHouseKeeperInstallation."""
    return {"clickhouse-keeper.altinity.com/chk": one(rendered, "ClickHouseKeeperInstallation")["metadata"]["name"]}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels only: the manifests use nothing else) selects ``labels``."""
    assert set(selector) <= {"matchLabels"}, selector
    return bool(selector.get("matchLabels", {}).items() <= labels.items())


def worker_container(rendered: Rendered) -> dict[str, Any]:
    (container,) = one(rendered, "Deployment", "engagement-worker")["spec"]["template"]["spec"]["containers"]
    return container


def env_value_from(container: dict[str, Any], name: str) -> dict[str, Any]:
    (entry,) = [e for e in container["env"] if e["name"] == name]
    value_from: dict[str, Any] = entry["valueFrom"]
    return value_from


def operator_secrets(rendered: Rendered) -> dict[str, set[str]]:
    """The Secrets the operators create, name -> keys (Strimzi: the cluster CA's certificate of each Kafka
    cluster, and the password and JAAS configuration of each SCRAM-SHA-512 KafkaUser; cert-manager: the
    certificate, key and issuing CA of each Certificate)."""
    made = {
        f"{k['metadata']['name']}-cluster-ca-cert": {"ca.crt", "ca.p12", "ca.password"}
        for k in objects(rendered, "Kafka")
    }
    for user in objects(rendered, "KafkaUser"):
        if user["spec"]["authentication"]["type"] == "scram-sha-512":
            made[user["metadata"]["name"]] = {"password", "sasl.jaas.config"}
    for certificate in objects(rendered, "Certificate"):  # cert-manager
        made[certificate["spec"]["secretName"]] = {"tls.crt", "tls.key", "ca.crt"}
    return made


def secret_references(value: Any) -> Iterator[tuple[str, str]]:
    """(Secret name, key) of every ``secretKeyRef`` and every key a ``secret`` volume projects, anywhere."""
    if isinstance(value, dict):
        if "secretKeyRef" in value:
            yield value["secretKeyRef"]["name"], value["secretKeyRef"]["key"]
        volume = value.get("secret")
        if isinstance(volume, dict) and "secretName" in volume:  # a volume (not cert-manager's secretName)
            assert volume.get("items"), f"{volume['secretName']}: project the keys used, not the whole Secret"
            for item in volume["items"]:
                yield volume["secretName"], item["key"]
        for inner in value.values():
            yield from secret_references(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from secret_references(inner)


def test_secret_references_are_found() -> None:
    found = set(secret_references(list(render(BASE))))
    assert ("engagement-worker", "password") in found and ("engagement-cluster-ca-cert", "ca.crt") in found
    assert ("engagement-clickhouse", "grafana-password") in found  # in the ClickHouseInstallation
    assert ("engagement-clickhouse-tls", "tls.key") in found and ("engagement-clickhouse-tls", "ca.crt") in found


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
def test_every_secret_key_referenced_exists(target: Path) -> None:
    rendered = render(target)
    available = operator_secrets(rendered)
    for secret in objects(rendered, "Secret"):
        available[secret["metadata"]["name"]] = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for name, key in secret_references(list(rendered)):
        assert key in available.get(name, set()), f"Secret {name} has no key {key}"


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
def test_kafka_only_over_tls_with_scram_for_the_workers(target: Path) -> None:
    rendered = render(target)
    kafka = one(rendered, "Kafka")
    cluster = kafka["metadata"]["name"]
    (listener,) = kafka["spec"]["kafka"]["listeners"]  # no plaintext listener besides
    assert listener["tls"] is True and listener["authentication"] == {"type": "scram-sha-512"}
    assert kafka["spec"]["kafka"]["authorization"] == {"type": "simple"}  # the KafkaUsers' ACLs apply
    assert "userOperator" in kafka["spec"]["entityOperator"]
    # Strimzi's policy for the listener admits the workers' pods only (the migrate Job never uses Kafka).
    (peer,) = listener["networkPolicyPeers"]
    assert set(peer) == {"podSelector"}
    assert selects(peer["podSelector"], pod_labels(rendered, "Deployment", "engagement-worker"))
    assert not selects(peer["podSelector"], pod_labels(rendered, "Job", "engagement-migrate"))
    settings = worker_settings(rendered)
    assert settings.kafka_security_protocol == "SASL_SSL" and settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert settings.kafka_ssl_check_hostname  # the brokers' certificates name the bootstrap service
    user = one(rendered, "KafkaUser", settings.kafka_sasl_username)
    assert user["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    assert user["spec"]["authentication"] == {"type": listener["authentication"]["type"]}
    # The worker's password is the one Strimzi generated for that user, its CA file Strimzi's cluster CA.
    container = worker_container(rendered)
    password = env_value_from(container, "ENGAGEMENT_KAFKA_SASL_PASSWORD")["secretKeyRef"]
    assert password == {"name": user["metadata"]["name"], "key": "password"}
    cafile = ca_file_source(rendered, "Deployment", "engagement-worker", settings.kafka_ssl_cafile)
    assert cafile == (f"{cluster}-cluster-ca-cert", "ca.crt")


def ca_file_source(rendered: Rendered, kind: str, name: str, path: str) -> tuple[str, str]:
    """(Secret, key) that the pod of workload ``kind``/``name`` sees at ``path``, mounted read-only."""
    spec = one(rendered, kind, name)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    file = Path(path)
    (mount,) = [m for m in container["volumeMounts"] if file.parent == Path(m["mountPath"])]
    assert mount.get("readOnly") is True, name
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    (item,) = [i for i in volume["secret"]["items"] if i["path"] == file.name]
    return volume["secret"]["secretName"], item["key"]


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
def test_clickhouse_clients_use_tls_checked_against_the_ca(target: Path) -> None:
    rendered = render(target)
    settings = worker_settings(rendered)
    assert settings.clickhouse_secure and settings.clickhouse_verify  # certificate and host name checked
    chi = one(rendered, "ClickHouseInstallation")
    configuration = chi["spec"]["configuration"]
    assert settings.clickhouse_port == int(configuration["settings"]["tcp_port_secure"])
    # The service the pipeline connects to is the installation's, with the secure port.
    (template,) = chi["spec"]["templates"]["serviceTemplates"]
    assert chi["spec"]["defaults"]["templates"]["serviceTemplate"] == template["name"]
    assert template["generateName"].replace("{chi}", chi["metadata"]["name"]) == settings.clickhouse_host
    assert template["spec"]["ports"] == [{"name": "secureclient", "port": settings.clickhouse_port}]  # TLS only
    # The server's certificate: issued by the CA issuer for the host name the pipeline checks.
    server = one(rendered, "Certificate", "engagement-clickhouse-tls")["spec"]
    assert settings.clickhouse_host in server["dnsNames"] and "server auth" in server["usages"]
    namespace = one(rendered, "Namespace")["metadata"]["name"]  # Grafana connects from another namespace
    assert f"{settings.clickhouse_host}.{namespace}.svc" in server["dnsNames"]
    issuer = one(rendered, "Issuer", server["issuerRef"]["name"])["spec"]
    ca = [c["spec"] for c in objects(rendered, "Certificate") if c["spec"]["secretName"] == issuer["ca"]["secretName"]]
    assert len(ca) == 1 and ca[0]["isCA"] is True
    # The servers read that certificate and key where the operator mounts them, and openssl.xml points at them.
    mounted = mounted_files(configuration)
    openssl = openssl_config(configuration, "server")
    certificate, key = openssl.findtext("certificateFile"), openssl.findtext("privateKeyFile")
    assert certificate in mounted.values() and key in mounted.values()
    assert certificate.endswith(f"/{server['secretName']}/tls.crt") and key.endswith(f"/{server['secretName']}/tls.key")
    assert {"sslv3", "tlsv1", "tlsv1_1"} <= set(openssl.findtext("disableProtocols", "").split(","))
    # The workers and the migrate Job check the servers against that CA, mounted from the same Secret.
    for kind, name in (("Deployment", "engagement-worker"), ("Job", "engagement-migrate")):
        assert ca_file_source(rendered, kind, name, settings.clickhouse_ca_file) == (server["secretName"], "ca.crt")


def openssl_config(configuration: dict[str, Any], side: str) -> ElementTree.Element:
    """The ``openSSL/<side>`` element (server or client) of the installation's openssl.xml."""
    element = ElementTree.fromstring(configuration["files"]["openssl.xml"]).find(f"openSSL/{side}")
    assert element is not None, f"openssl.xml has no openSSL/{side}"
    return element


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
def test_clickhouse_servers_talk_to_each_other_over_tls_checked_against_the_ca(target: Path) -> None:
    rendered = render(target)
    chi = one(rendered, "ClickHouseInstallation")
    configuration = chi["spec"]["configuration"]
    (cluster,) = configuration["clusters"]
    # Distributed queries: the operator's remote_servers use the secure port; the servers authenticate
    # each other with a generated cluster secret.
    assert cluster["secure"] == "yes" and cluster["secret"] == {"auto": "yes"}
    # Replication: HTTPS on the port the operator declares as `interserver` (9009), the plain one removed.
    settings = configuration["settings"]
    assert settings["interserver_https_port"] == 9009 and settings["interserver_http_port"] == "_removed_"
    # Each server checks the other's certificate against the CA of the server certificate's Secret.
    server = one(rendered, "Certificate", "engagement-clickhouse-tls")["spec"]
    client = openssl_config(configuration, "client")
    ca = client.findtext("caConfig")
    assert ca in mounted_files(configuration).values() and ca.endswith(f"/{server['secretName']}/ca.crt")
    assert client.findtext("verificationMode") in ("relaxed", "strict")
    assert client.findtext("invalidCertificateHandler/name") == "RejectCertificateHandler"
    assert client.findtext("loadDefaultCAFile") == "false"  # only the pipeline's CA
    assert {"sslv3", "tlsv1", "tlsv1_1"} <= set(client.findtext("disableProtocols", "").split(","))
    # Between its pods, the NetworkPolicy admits the TLS ports only.
    clickhouse = pipeline_pods(rendered).clickhouse
    policy = policy_for(rendered, clickhouse)
    for port, allowed in ((9440, True), (9009, True), (9000, False), (8123, False)):
        assert admitted(policy, clickhouse, port) is allowed and reaches(policy, clickhouse, port) is allowed, port


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
def test_kafka_user_acls_cover_exactly_what_the_workers_use(target: Path) -> None:
    rendered = render(target)
    settings = worker_settings(rendered)
    acls = one(rendered, "KafkaUser", settings.kafka_sasl_username)["spec"]["authorization"]["acls"]
    granted: dict[tuple[str, str], set[str]] = {}
    for acl in acls:
        resource = acl["resource"]
        assert resource["patternType"] == "literal" and "*" not in resource["name"], resource
        assert acl.get("host", "*") == "*" and acl.get("type", "allow") == "allow", acl
        key = (resource["type"], resource["name"])
        assert key not in granted, f"{key}: twice"
        granted[key] = set(acl["operations"])
    topics = {name: ops for (kind, name), ops in granted.items() if kind == "topic"}
    assert set(granted) - {("topic", t) for t in topics} == {("group", settings.app_id)}
    assert granted[("group", settings.app_id)] == {"Describe", "Read"}  # join, commit and fetch offsets
    internal = internal_topics(settings)
    assert set(topics) == set(pipeline_topics(settings)) | set(internal)
    changelog = next(name for name in internal if name.endswith("-changelog"))
    read = set(consumed_topics(settings)) | set(internal)
    written = {settings.topic(t) for t in (REKEY_TOPIC, DEAD_LETTER_TOPIC, ALERTS_TOPIC)} | {changelog}
    for name, operations in topics.items():
        expected = {"Describe"}
        expected |= {"Read"} if name in read else set()
        expected |= {"Write"} if name in written else set()
        expected |= {"Create"} if name in internal else set()  # Faust declares its own topics at start
        assert operations == expected, name


def users_of(rendered: Rendered) -> dict[str, Any]:
    configuration = one(rendered, "ClickHouseInstallation")["spec"]["configuration"]
    users: dict[str, Any] = configuration["users"]
    return users


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
def test_clickhouse_users_grants_and_networks(target: Path) -> None:
    rendered = render(target)
    settings = worker_settings(rendered)
    users = users_of(rendered)
    names = {key.split("/")[0] for key in users}
    assert names == {settings.clickhouse_user, "grafana"}
    database = settings.clickhouse_database
    # The cluster DDL: CREATE TABLE ... ENGINE = Distributed needs REMOTE, ON CLUSTER needs CLUSTER, and the
    # migrations read system.clusters (config.xml's access_control_improvements ask grants for both).
    assert settings.clickhouse_cluster
    cluster_ddl = ["GRANT REMOTE ON *.*", "GRANT CLUSTER ON *.*", "GRANT SELECT ON system.clusters"]
    expected = {
        settings.clickhouse_user: [f"GRANT ALL ON {database}.*", *cluster_ddl],
        "grafana": [f"GRANT SELECT ON {database}.*"],
    }
    for name in names:
        assert users[f"{name}/grants/query"] == expected[name], name
        # `grants` excludes these (the server refuses the users file); allow_databases keeps global rights.
        assert not {f"{name}/allow_databases/database", f"{name}/access_management"} & set(users), name
        check_config_grants(users[f"{name}/grants/query"])
        # From the pod network only, never from anywhere.
        assert not {k for k in users if k.startswith(f"{name}/networks/") and k != f"{name}/networks/ip"}, name
        for cidr in users[f"{name}/networks/ip"]:
            network = ipaddress.ip_network(cidr)
            assert network.is_private and network.prefixlen >= 8, (name, cidr)


@pytest.mark.parametrize(
    "query",
    [
        "GRANT SELEKT ON engagement.*",  # no such privilege
        "GRANT REMOTE ON engagement.*",  # global: only ON *.*
        "GRANT SELECT ON engagement.* TO grafana",  # a users file names no grantees
        "GRANT ON CLUSTER engagement SELECT ON engagement.*",  # nor a cluster
        "GRANT analyst",  # nor roles
    ],
)
def test_the_grant_check_refuses_what_a_users_file_refuses(query: str) -> None:
    with pytest.raises((AssertionError, RuntimeError)):
        check_config_grants([query])


# A policy's rules and their peers, by direction.
DIRECTIONS = (("ingress", "from"), ("egress", "to"))


def network_policies(rendered: Rendered) -> list[dict[str, Any]]:
    policies = objects(rendered, "NetworkPolicy")
    for policy in policies:
        name, spec = policy["metadata"]["name"], policy["spec"]
        # Both directions, always said: a policy without Egress in its types leaves egress open.
        assert spec["policyTypes"] == ["Ingress", "Egress"], name
        for direction, peers in DIRECTIONS:
            for rule in spec[direction]:
                assert rule.get(peers), f"{name}: an {direction} rule without `{peers}` allows any peer"
                for peer in rule[peers]:
                    assert "ipBlock" not in peer and peer.get("podSelector"), peer
    return policies


def policy_for(rendered: Rendered, labels: dict[str, str]) -> dict[str, Any]:
    (policy,) = [p for p in network_policies(rendered) if selects(p["spec"]["podSelector"], labels)]
    return policy


def _allows(rules: list[dict[str, Any]], peers: str, labels: dict[str, str], port: int, protocol: str) -> bool:
    """Whether one of ``rules`` allows pods of this namespace with ``labels`` on ``port``."""
    for rule in rules:
        ports = rule.get("ports")
        if ports is not None and {"protocol": protocol, "port": port} not in ports:
            continue
        if any("namespaceSelector" not in peer and selects(peer["podSelector"], labels) for peer in rule[peers]):
            return True
    return False


def admitted(policy: dict[str, Any], labels: dict[str, str], port: int) -> bool:
    """Whether ``policy`` admits pods of this namespace with ``labels`` to ``port``."""
    return _allows(policy["spec"]["ingress"], "from", labels, port, "TCP")


def app_name(peer: dict[str, Any]) -> str:
    labels: dict[str, str] = peer["podSelector"]["matchLabels"]
    return labels.get("app.kubernetes.io/name") or labels["app"]


def outside_peers(policy: dict[str, Any]) -> list[tuple[dict[str, Any], list[Any] | None]]:
    """(peer, ports) of every peer in another namespace."""
    return [
        (peer, rule.get("ports"))
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
        if "namespaceSelector" in peer
    ]


def reaches(policy: dict[str, Any], labels: dict[str, str], port: int, protocol: str = "TCP") -> bool:
    """Whether ``policy`` lets its pods connect to pods of this namespace with ``labels`` on ``port``."""
    return _allows(policy["spec"]["egress"], "to", labels, port, protocol)


DNS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}
DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


def resolves(policy: dict[str, Any]) -> bool:
    """Whether ``policy`` lets its pods ask the cluster DNS (UDP and TCP 53)."""
    return any(rule["to"] == [DNS_PEER] and rule.get("ports") == DNS_PORTS for rule in policy["spec"]["egress"])


def kafka_pod_labels(rendered: Rendered) -> dict[str, str]:
    """The labels Strimzi puts on the pods of the Kafka cluster's node pool (brokers and controllers)."""
    name = one(rendered, "Kafka")["metadata"]["name"]
    pool = one(rendered, "KafkaNodePool")["metadata"]["name"]
    return {
        "strimzi.io/cluster": name,
        "strimzi.io/kind": "Kafka",
        "strimzi.io/name": f"{name}-kafka",
        "strimzi.io/pool-name": pool,
    }


class Pods(NamedTuple):
    """The labels of each kind of pod the NetworkPolicies are about."""

    worker: dict[str, str]
    migrate: dict[str, str]
    clickhouse: dict[str, str]
    keeper: dict[str, str]
    brokers: dict[str, str]


def pipeline_pods(rendered: Rendered) -> Pods:
    return Pods(
        pod_labels(rendered, "Deployment", "engagement-worker"),
        pod_labels(rendered, "Job", "engagement-migrate"),
        clickhouse_pod_labels(rendered),
        keeper_pod_labels(rendered),
        kafka_pod_labels(rendered),
    )


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
def test_network_policies_let_each_pod_reach_only_what_it_uses(target: Path) -> None:
    rendered = render(target)
    settings = worker_settings(rendered)
    worker, migrate, clickhouse, keeper, brokers = pods = pipeline_pods(rendered)
    (bootstrap,) = settings.bootstrap_servers.split(",")
    kafka_port = int(bootstrap.rsplit(":", 1)[1])
    (node,) = one(rendered, "ClickHouseInstallation")["spec"]["configuration"]["zookeeper"]["nodes"]
    # The workers: the brokers on the client listener, ClickHouse on the port they use, DNS.
    worker_policy = policy_for(rendered, worker)
    assert reaches(worker_policy, brokers, kafka_port) and reaches(worker_policy, clickhouse, settings.clickhouse_port)
    assert resolves(worker_policy)
    assert not reaches(worker_policy, brokers, 9091) and not reaches(worker_policy, clickhouse, 8123)
    assert not reaches(worker_policy, keeper, node["port"])
    # The migrate Job: ClickHouse and DNS; nothing connects to it.
    migrate_policy = policy_for(rendered, migrate)
    assert reaches(migrate_policy, clickhouse, settings.clickhouse_port) and resolves(migrate_policy)
    assert not reaches(migrate_policy, brokers, kafka_port) and migrate_policy["spec"]["ingress"] == []
    # ClickHouse: its own pods (distributed queries, replication), the Keeper, DNS; not the pipeline or Kafka
    # (``remote()``, which the ingest role may call, reaches nothing else).
    clickhouse_policy = policy_for(rendered, clickhouse)
    assert reaches(clickhouse_policy, clickhouse, 9440) and reaches(clickhouse_policy, clickhouse, 9009)
    assert reaches(clickhouse_policy, keeper, node["port"]) and resolves(clickhouse_policy)
    assert not reaches(clickhouse_policy, brokers, kafka_port) and not reaches(
        clickhouse_policy, worker, settings.web_port
    )
    # The Keeper: its own pods (Raft) and DNS.
    keeper_policy = policy_for(rendered, keeper)
    assert reaches(keeper_policy, keeper, 9234) and resolves(keeper_policy)
    assert not reaches(keeper_policy, clickhouse, 9000)
    # Nowhere else: every peer is one of these pods or the cluster DNS (no address block, no internet).
    for policy in network_policies(rendered):
        for rule in policy["spec"]["egress"]:
            for peer in rule["to"]:
                if "namespaceSelector" in peer:
                    assert peer == DNS_PEER and rule["ports"] == DNS_PORTS, policy["metadata"]["name"]
                else:
                    assert any(selects(peer["podSelector"], labels) for labels in pods), peer


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
def test_network_policies_admit_only_who_needs_each_port(target: Path) -> None:
    rendered = render(target)
    settings = worker_settings(rendered)
    worker, migrate, clickhouse, keeper, _ = pipeline_pods(rendered)
    # Workers: nothing of this namespace, Prometheus (elsewhere) on the web port only.
    worker_policy = policy_for(rendered, worker)
    assert not any(admitted(worker_policy, labels, settings.web_port) for labels in (worker, migrate, clickhouse))
    ((prometheus, ports),) = outside_peers(worker_policy)
    assert app_name(prometheus) == "prometheus" and ports == [{"protocol": "TCP", "port": settings.web_port}]
    # ClickHouse: the workers and the migrate Job on the port they use, its own pods; Grafana and the operator
    # from elsewhere; the Keeper never.
    clickhouse_policy = policy_for(rendered, clickhouse)
    assert admitted(clickhouse_policy, worker, settings.clickhouse_port)
    assert admitted(clickhouse_policy, migrate, settings.clickhouse_port)
    assert not admitted(clickhouse_policy, worker, 9000) and not admitted(clickhouse_policy, migrate, 9000)  # TLS only
    assert admitted(clickhouse_policy, clickhouse, 9009)  # replication between replicas
    assert not admitted(clickhouse_policy, worker, 8123) and not admitted(clickhouse_policy, keeper, 9000)
    outside = {app_name(peer): ports for peer, ports in outside_peers(clickhouse_policy)}
    assert outside == {
        "grafana": [{"protocol": "TCP", "port": settings.clickhouse_port}],  # the TLS port, as the pipeline
        "clickhouse-operator": [{"protocol": "TCP", "port": 8123}],
    }
    # Keeper: the ClickHouse servers on the port of clickhouse.yaml, its own pods, nothing of the pipeline.
    keeper_policy = policy_for(rendered, keeper)
    (node,) = one(rendered, "ClickHouseInstallation")["spec"]["configuration"]["zookeeper"]["nodes"]
    assert admitted(keeper_policy, clickhouse, node["port"]) and admitted(keeper_policy, keeper, 9234)
    assert not admitted(keeper_policy, worker, node["port"]) and not admitted(keeper_policy, migrate, node["port"])
    # Every peer of this namespace is one of the pipeline's pods.
    for policy in network_policies(rendered):
        for rule in policy["spec"]["ingress"]:
            for peer in rule["from"]:
                if "namespaceSelector" not in peer:
                    known = (worker, migrate, clickhouse, keeper)
                    assert any(selects(peer["podSelector"], labels) for labels in known), peer
