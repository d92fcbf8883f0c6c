"""deploy/k8s: every manifest parses and belongs to a kustomization; the overlays render with kubectl's
kustomize; the core objects validate against Kubernetes' schemas (kubernetes-validate, strict); the operator
objects (Strimzi, Altinity, Prometheus operator) hold what the pipeline needs: every pipeline topic with the
workers' partition count, no more workers than partitions, a 2 x 2 ClickHouse cluster with its users, probes
and scraping on the worker's port, and only real settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from pipeline.kafka_admin import pipeline_topics
from pipeline.settings import PREFIX, Settings
from pipeline.worker import create_app, internal_topics
from tests.deploy_files import K8S, PROMETHEUS, k8s_manifest_files, kustomization_files, load
from tests.deploy_manifests import (
    kustomize_references,
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
OPERATOR_GROUPS += ("monitoring.coreos.com/",)
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
    assert {o["kind"] for o in core} >= {"Namespace", "ConfigMap", "Secret", "Deployment", "Job", "Service"}
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
    assert settings.bootstrap_servers == f"{cluster}-kafka-bootstrap:9092"
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
        assert users[f"{user}/allow_databases/database"] == [settings.clickhouse_database]
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
