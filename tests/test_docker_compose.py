"""docker-compose.yml: valid for docker-compose, and consistent with every file it mounts.

`docker-compose config` (Debian's docker-compose, which needs no Docker daemon for it) checks the
file and prints it normalised; the tests read that output and check that each mounted file
exists and that every address in the mounted configs is a service of the file on a port it
listens on.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from alerts.build import JOB
from dashboards.panels import DEFAULT_COLLECTOR_URL
from tests.conftest import ROOT, find_binary

SERVICES = {"redis", "collector", "demo", "prometheus", "alertmanager", "grafana"}
Compose = dict[str, Any]


@pytest.fixture(scope="module")
def compose() -> Compose:
    """The compose file as `docker-compose config` normalises it."""
    result = subprocess.run(
        [find_binary("docker-compose"), "--file", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config: Compose = yaml.safe_load(result.stdout)
    return config


def mounts(service: Compose) -> dict[str, str]:
    """Container path -> host path (or volume name) of a service's volumes."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume["source"], volume["target"]
        else:
            source, target = volume.split(":")[:2]
        found[target] = source
    return found


def listens(service: Compose) -> set[int]:
    """The container ports a service declares."""
    ports = {int(port) for port in service.get("expose", [])}
    for port in service.get("ports", []):
        ports.add(int(port["target"]) if isinstance(port, dict) else int(port.split(":")[-1]))
    return ports


def published(service: Compose, target: int) -> int:
    for port in service.get("ports", []):
        if int(port["target"]) == target:
            return int(port["published"])
    raise AssertionError(f"container port {target} is not published")


def assert_reaches(compose: Compose, address: str, what: str) -> str:
    """`host:port` is a service of the file listening on that port; the service's name."""
    host, _, port = address.rpartition(":")
    assert host in compose["services"], f"{what}: {host!r} is not a service"
    assert int(port) in listens(compose["services"][host]), f"{what}: {host} has no port {port}"
    return host


def command_text(service: Compose) -> str:
    command = service.get("command", [])
    return " ".join(command) if isinstance(command, list) else str(command)


def prometheus_config(compose: Compose) -> tuple[str, dict[str, Any]]:
    """deploy/prometheus.yml as the prometheus service starts it: with the `sed -e` rewrites
    of its command applied. The config's text and its parsed form."""
    text = (ROOT / "deploy" / "prometheus.yml").read_text()
    for old, new in re.findall(
        r"-e 's\|(.+?)\|(.+?)\|g'", command_text(compose["services"]["prometheus"])
    ):
        text = re.sub(old, new, text)
    config: dict[str, Any] = yaml.safe_load(text)
    return text, config


def test_the_file_has_every_part_of_the_tour(compose: Compose) -> None:
    """Collector, Redis, Prometheus, Alertmanager, Grafana and the demo traffic."""
    assert set(compose["services"]) == SERVICES


def test_every_mounted_file_exists(compose: Compose) -> None:
    """Each bind mount's source exists in the repository; named volumes are declared."""
    declared = set(compose.get("volumes", {}))
    bind_mounts = 0
    for name, service in compose["services"].items():
        for target, source in mounts(service).items():
            if source.startswith("/"):
                assert Path(source).exists(), f"{name}: {source} (mounted at {target})"
                assert Path(source).resolve().is_relative_to(ROOT), f"{name}: {source}"
                bind_mounts += 1
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
        build = service.get("build")
        if build is not None:
            assert (Path(build["context"]) / "Dockerfile").exists(), name
    assert bind_mounts >= 5


def test_servers_have_healthchecks_and_start_after_what_they_need(compose: Compose) -> None:
    """Every server has a healthcheck; each waits for its dependencies to be healthy."""
    services = compose["services"]
    for name, service in services.items():
        if name != "demo":
            assert service["healthcheck"]["test"], name
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency], f"{name} -> {dependency}"
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert "/readyz" in " ".join(services["collector"]["healthcheck"]["test"])


def test_redis_keeps_an_append_only_file(compose: Compose) -> None:
    """Redis runs with AOF on a named volume, so pending failures survive a restart."""
    redis = compose["services"]["redis"]
    assert "--appendonly yes" in command_text(redis)
    assert mounts(redis)["/data"] in compose["volumes"]


def test_collector_and_demo_addresses(compose: Compose) -> None:
    """The collector reaches Redis by its service name and listens where it is published; the
    demo sends to it; the drill-down links use the port the browser reaches."""
    services = compose["services"]
    env = services["collector"]["environment"]
    redis = urlsplit(env["PW_REDIS_URL"])
    assert_reaches(compose, f"{redis.hostname}:{redis.port}", "PW_REDIS_URL")
    port = int(env["PW_PORT"])
    assert env["PW_HOST"] == "0.0.0.0"
    assert port in listens(services["collector"])
    demo = shlex.split(command_text(services["demo"]))
    url = urlsplit(demo[demo.index("--url") + 1])
    assert assert_reaches(compose, f"{url.hostname}:{url.port}", "demo --url") == "collector"
    assert f"http://localhost:{published(services['collector'], port)}" == DEFAULT_COLLECTOR_URL


def test_prometheus_scrapes_and_alerts_through_service_names(
    compose: Compose, tmp_path: Path
) -> None:
    """After the service's rewrites every target of deploy/prometheus.yml is a service on its
    port, the collector's job is the one the alerts select, and the config with its rules
    passes promtool."""
    text, config = prometheus_config(compose)
    jobs = {}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                jobs[job["job_name"]] = assert_reaches(compose, target, job["job_name"])
    assert jobs[JOB] == "collector"
    for manager in config["alerting"]["alertmanagers"]:
        for static in manager["static_configs"]:
            for target in static["targets"]:
                assert assert_reaches(compose, target, "alerting") == "alertmanager"
    prometheus = compose["services"]["prometheus"]
    assert "--enable-feature=exemplar-storage" in command_text(prometheus)
    # promtool runs here, not in the container: the container's paths back to the host's.
    for target, source in mounts(prometheus).items():
        if source.startswith("/"):
            text = text.replace(target, source)
    rules = [Path(p) for p in yaml.safe_load(text)["rule_files"]]
    assert rules and all(p.exists() for p in rules)
    (tmp_path / "prometheus.yml").write_text(text)
    check = subprocess.run(
        [find_binary("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_alertmanager_reads_the_mounted_config(compose: Compose) -> None:
    """Alertmanager's --config.file is where deploy/alertmanager.yml is mounted."""
    service = compose["services"]["alertmanager"]
    config = re.search(r"--config\.file=(\S+)", command_text(service))
    assert config is not None
    assert mounts(service)[config.group(1)] == str(ROOT / "deploy" / "alertmanager.yml")


def test_grafana_gets_its_datasources_and_dashboards(compose: Compose) -> None:
    """Grafana's data sources are services on their ports, the exemplar link opens the
    collector's page where the browser reaches it, the provisioned folder is the mounted
    dashboards/json, and the image is the Grafana version the dashboards are built for."""
    grafana = compose["services"]["grafana"]
    volumes = mounts(grafana)
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    for kind in ("datasources", "dashboards"):
        assert volumes[f"/etc/grafana/provisioning/{kind}"] == str(provisioning / kind)
    sources = yaml.safe_load((provisioning / "datasources" / "precondition-watch.yml").read_text())
    by_type = {s["type"]: s for s in sources["datasources"]}
    for kind, service in (("prometheus", "prometheus"), ("alertmanager", "alertmanager")):
        url = urlsplit(by_type[kind]["url"])
        assert assert_reaches(compose, f"{url.hostname}:{url.port}", kind) == service
    assert by_type["prometheus"]["uid"] == "prometheus" and by_type["prometheus"]["isDefault"]
    (link,) = by_type["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert link["name"] == "request_id"
    # `$$` is a literal `$` in Grafana's provisioning files.
    assert link["url"] == (
        f"{DEFAULT_COLLECTOR_URL}/ui/services/$${{__data.fields.service}}/requests/$${{__value.raw}}"
    )
    providers = yaml.safe_load((provisioning / "dashboards" / "precondition-watch.yml").read_text())
    (provider,) = providers["providers"]
    path = provider["options"]["path"]
    assert volumes[path] == str(ROOT / "dashboards" / "json")
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (
        Path(home).parent == Path(path)
        and (ROOT / "dashboards" / "json" / Path(home).name).exists()
    )
    sdk = importlib.metadata.version("grafana-foundation-sdk").split("!")[-1]
    assert grafana["image"] == f"grafana/grafana:{sdk}"
