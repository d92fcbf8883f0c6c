"""deploy/compose: the Compose file validates against the Compose Specification's schema and loads in
docker-compose (no daemon needed); Kafka runs in KRaft mode with enough partitions; the workers scale, wait
for the migrations, read only real settings and inherit the image's health check; no health check puts a
password on a command line; ClickHouse has the ingest and read-only users with GRANTs a current ClickHouse
accepts; Prometheus and Grafana get the files of deploy/ and the environment those files read."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pipeline.cli import build_parser
from pipeline.settings import PREFIX, Settings
from tests.deploy_files import (
    CLICKHOUSE_TYPE,
    COMPOSE,
    PROMETHEUS,
    ROOT,
    compose_clickhouse_users_files,
    compose_file,
    compose_prometheus_config,
    dashboard_provider_files,
    load,
    prometheus_rule_files,
    provisioning_environment,
)
from tests.deploy_manifests import (
    bind_mounts,
    check_config_grants,
    compose,
    compose_service,
    interpolate,
    run,
    tool,
)
from tests.unit.test_deploy_docker import healthcheck_command

SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"
SETTINGS = {PREFIX + name.upper() for name in Settings.__dataclass_fields__}
ENGAGEMENT_SERVICES = ("migrate", "worker", "traffic")  # the services running the worker image
ONE_SHOT = ("migrate", "traffic")  # no web server: the image's healthcheck is disabled on them


def engagement_env(service: str) -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in compose_service(service)["environment"].items()}


def settings_of(service: str) -> Settings:
    return Settings.from_env(engagement_env(service))


def test_validates_against_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.validate(compose(), schema, cls=jsonschema.Draft202012Validator)


def test_schema_rejects_what_compose_rejects() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    broken = {"services": {"worker": {"image": "x", "depends_on": {"kafka": {"condition": "when_ready"}}}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize("profiles", [[], ["--profile", "traffic"]], ids=["default", "traffic"])
def test_docker_compose_loads_it(profiles: list[str]) -> None:
    # docker-compose's own loader: interpolation, merge keys, references between services, mount paths.
    done = run(tool("docker-compose"), "-f", compose_file(), *profiles, "config", "--format", "json", cwd=COMPOSE)
    assert done.returncode == 0, done.stderr
    services = set(json.loads(done.stdout)["services"])
    expected = {"kafka", "clickhouse", "migrate", "worker", "prometheus", "grafana"}
    assert services == (expected | {"traffic"} if profiles else expected)


def test_images_are_pinned() -> None:
    for name, service in compose()["services"].items():
        image = interpolate(service["image"])
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), f"{name}: {image}"
        assert not image.endswith(":latest"), name


def test_every_long_running_service_has_a_healthcheck() -> None:
    # The one-shot services disable the image's check; the workers inherit it (the Dockerfile's HEALTHCHECK,
    # tests/unit/test_deploy_docker.py), written once; every other service has its own.
    for name, service in compose()["services"].items():
        check = service.get("healthcheck", {})
        if name in ONE_SHOT:
            assert check == {"disable": True}, name
        elif name in ENGAGEMENT_SERVICES:
            assert "healthcheck" not in service, f"{name}: the image's HEALTHCHECK applies"
            assert healthcheck_command()
        else:
            assert check.get("test"), f"{name} has no healthcheck"


def test_no_healthcheck_puts_a_password_on_a_command_line() -> None:
    # A command's arguments are visible to every user of the machine (`ps`); a password variable expanded
    # by the shell lands there too.
    services = compose()["services"]
    variables = {name for s in services.values() for name in s.get("environment", {}) if "PASSWORD" in name}
    assert {"CLICKHOUSE_INGEST_PASSWORD", "ENGAGEMENT_CLICKHOUSE_PASSWORD"} <= variables
    for name, service in services.items():
        command = " ".join(str(a) for a in service.get("healthcheck", {}).get("test", []))
        assert "password" not in command.lower() and not any(v in command for v in variables), name
    # ClickHouse: the HTTP interface's /ping (no credentials) on its HTTP port.
    check = compose_service("clickhouse")["healthcheck"]["test"]
    assert check[0] == "CMD" and check[-1] == "http://127.0.0.1:8123/ping"
    assert any(port.endswith(":8123") for port in compose_service("clickhouse")["ports"])


def test_kafka_runs_kraft_with_enough_partitions() -> None:
    env = {k: str(v) for k, v in compose_service("kafka")["environment"].items()}
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16  # a UUID, as kafka-storage wants
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "INTERNAL://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    settings = settings_of("worker")
    assert settings.bootstrap_servers == "kafka:9092"
    assert settings.partitions >= 8 and int(env["KAFKA_NUM_PARTITIONS"]) == settings.partitions
    assert settings.replication_factor <= int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"])


@pytest.mark.parametrize("service", ENGAGEMENT_SERVICES)
def test_engagement_services_use_real_settings_of_the_image(service: str) -> None:
    env = engagement_env(service)
    unknown = {name for name in env if name not in SETTINGS}
    assert not unknown
    settings = Settings.from_env(env)
    assert settings.warehouse == "server" and settings.clickhouse_host == "clickhouse"
    spec = compose_service(service)
    assert spec["build"] == {"context": "../..", "dockerfile": "deploy/docker/Dockerfile"}
    assert (COMPOSE / spec["build"]["context"] / spec["build"]["dockerfile"]).is_file()


def test_commands_parse_in_the_cli() -> None:
    parser = build_parser()
    for service in ENGAGEMENT_SERVICES:
        command = [interpolate(str(a)) for a in compose_service(service)["command"]]
        parser.parse_args(command)  # exits (fails the test) on an unknown command or flag
    assert compose_service("migrate")["command"] == ["migrate"]
    assert compose_service("worker")["command"] == ["worker"]
    traffic = compose_service("traffic")
    assert traffic["profiles"] == ["traffic"]
    assert traffic["command"][:2] == ["generate", "--live"]


def test_workers_scale_and_wait_for_the_migrations() -> None:
    worker = compose_service("worker")
    assert "container_name" not in worker and "ports" not in worker  # `--scale worker=N` needs both absent
    assert worker["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert worker["depends_on"]["kafka"] == {"condition": "service_healthy"}
    assert worker["depends_on"]["clickhouse"] == {"condition": "service_healthy"}
    assert compose_service("migrate")["depends_on"]["clickhouse"] == {"condition": "service_healthy"}


def users_xml() -> ET.Element:
    (path,) = compose_clickhouse_users_files()
    return ET.parse(path).getroot()


def test_clickhouse_users_ingest_and_read_only_grafana() -> None:
    root = users_xml()
    assert root.tag == "clickhouse"
    clickhouse = compose_service("clickhouse")
    mounts = bind_mounts(clickhouse)
    assert mounts["/etc/clickhouse-server/users.d/engagement.xml"] == compose_clickhouse_users_files()[0]
    server_env = {k: interpolate(str(v)) for k, v in clickhouse["environment"].items()}
    database = settings_of("worker").clickhouse_database
    users = {user.tag: user for user in root.iterfind("users/*")}
    assert set(users) == {"ingest", "grafana"}
    password_variable: dict[str, str] = {}
    # Rights as GRANTs (a single node: no Distributed table, no REMOTE), never allow_databases, which leaves
    # the global privileges (SYSTEM, file(), url(), remote()...); `grants` excludes access_management.
    grants = {"ingest": [f"GRANT ALL ON {database}.*"], "grafana": [f"GRANT SELECT ON {database}.*"]}
    for name, user in users.items():
        password = user.find("password")
        assert password is not None and not (password.text or "").strip(), f"{name}: a password in the file"
        password_variable[name] = str(password.get("from_env"))
        assert password_variable[name] in server_env
        queries = [str(q.text) for q in user.iterfind("grants/query")]
        assert queries == grants[name], name
        check_config_grants(queries)
        assert user.find("allow_databases") is None and user.find("access_management") is None, name
    profile = root.find(f"profiles/{users['grafana'].findtext('profile')}")
    assert profile is not None and profile.findtext("readonly") == "2"
    # The workers log in as ingest with its password; Grafana as grafana with its password.
    worker = engagement_env("worker")
    assert worker["ENGAGEMENT_CLICKHOUSE_USER"] == "ingest"
    assert worker["ENGAGEMENT_CLICKHOUSE_PASSWORD"] == server_env[password_variable["ingest"]]
    grafana = {k: interpolate(str(v)) for k, v in compose_service("grafana")["environment"].items()}
    assert grafana["CLICKHOUSE_READONLY_USER"] == "grafana"
    assert grafana["CLICKHOUSE_READONLY_PASSWORD"] == server_env[password_variable["grafana"]]


def test_grafana_gets_the_provisioning_its_plugin_and_its_environment() -> None:
    grafana = compose_service("grafana")
    env = {k: interpolate(str(v)) for k, v in grafana["environment"].items()}
    assert set(env) - {"GF_INSTALL_PLUGINS", "GF_SECURITY_ADMIN_PASSWORD"} == provisioning_environment()
    assert all(env[name] for name in provisioning_environment() - {"CLICKHOUSE_CA_CERT"})
    assert (env["CLICKHOUSE_SECURE"], env["CLICKHOUSE_CA_CERT"]) == ("false", "")  # the try-out is plaintext
    plugin, version = env["GF_INSTALL_PLUGINS"].split(" ")
    assert plugin == CLICKHOUSE_TYPE and re.fullmatch(r"4\.\d+\.\d+", version)
    assert env["CLICKHOUSE_DATABASE"] == settings_of("worker").clickhouse_database
    assert env["CLICKHOUSE_HOST"] == "clickhouse" and env["PROMETHEUS_URL"] == "http://prometheus:9090"
    mounts = bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == ROOT / "deploy" / "grafana" / "provisioning"
    (provider,) = [p for path in dashboard_provider_files() for p in load(path)["providers"]]
    assert mounts[provider["options"]["path"]] == ROOT / "deploy" / "grafana" / "dashboards"


def test_prometheus_gets_the_rules_and_finds_every_worker() -> None:
    prometheus = compose_service("prometheus")
    mounts = bind_mounts(prometheus)
    config_path = "/etc/prometheus/prometheus.yml"
    assert mounts[config_path] == compose_prometheus_config()
    assert f"--config.file={config_path}" in prometheus["command"]
    config: dict[str, Any] = yaml.safe_load(compose_prometheus_config().read_text(encoding="utf-8"))
    # rule_files are relative to the config file: each must be a mounted file of deploy/prometheus/rules.
    seen = set()
    for rule_file in config["rule_files"]:
        container = str(Path(config_path).parent / rule_file)
        (directory,) = [d for d in mounts if container.startswith(d + "/")]
        seen.add(mounts[directory] / Path(container).relative_to(directory))
    assert seen == set(prometheus_rule_files())
    assert config["rule_files"] == load(PROMETHEUS / "prometheus.yml")["rule_files"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "engagement" and job["metrics_path"] == "/metrics"
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["worker"] and discovery["port"] == settings_of("worker").web_port


def test_makefile_up_and_down() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "COMPOSE := docker compose -f deploy/compose/compose.yaml" in makefile
    up = re.search(r"^up:.*\n\t(.*)\n", makefile, re.MULTILINE)
    down = re.search(r"^down:.*\n\t(.*)\n", makefile, re.MULTILINE)
    assert up and "up --detach --build" in up.group(1) and "--scale worker=$(WORKERS)" in up.group(1)
    assert down and "down --volumes" in down.group(1)
