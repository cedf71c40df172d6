"""The deploy files (Dockerfile, docker-compose.yml, Prometheus and Grafana configs), checked without a
Docker engine: with the real linters and validators, and by reading the files for what they cannot see.

The tools are installed by scripts/install_os_deps.sh (docker-compose, promtool; as root) and
scripts/install_tools.sh (hadolint, check-jsonschema). A missing tool fails the test: CI installs them,
so a skip would only hide a broken install.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.transport.worker import DRAIN_MARGIN
from tests.procs import tool

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
# Variables compose substitutes; scrubbed so that the checks see the defaults, not this shell's values.
COMPOSE_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)")
# The only variables nginx's envsubst touches: it substitutes defined names, which are all upper case.
TEMPLATE_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def compose_variables() -> set[str]:
    return set(COMPOSE_VAR.findall(COMPOSE.read_text()))


def clean_env() -> dict[str, str]:
    names = compose_variables()
    return {k: v for k, v in os.environ.items() if k not in names and not k.startswith("COMPOSE_")}


def seconds(duration: str | int) -> float:
    """A compose duration ("150s", "2m30s", "1m") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", str(duration))
    assert parts and "".join(n + u for n, u in parts) == str(duration), f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume entry, short or long syntax."""
    result = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            result.append((entry["source"], entry["target"], bool(entry.get("read_only", False))))
        else:
            source, target, *mode = entry.split(":")
            result.append((source, target, "ro" in (mode[0].split(",") if mode else [])))
    return result


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency -> condition (the list form means service_started)."""
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for entry in [*service.get("ports", []), *service.get("expose", [])]:
        ports.add(int(entry["target"]) if isinstance(entry, dict) else int(str(entry).split(":")[-1]))
    return ports


# --- docker-compose.yml -------------------------------------------------------------------------------


def compose_config(env_file: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    # --env-file replaces the project's .env, so a developer's own .env cannot make this pass or fail.
    args = [tool("docker-compose"), "-f", str(COMPOSE), "--env-file", str(env_file), "config"]
    return subprocess.run(args, cwd=ROOT, env={**clean_env(), **variables}, capture_output=True, text=True)


@pytest.mark.parametrize("env_file", ["none", ".env.example"])
def test_compose_config_is_valid_once_grafanas_password_is_chosen(env_file: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.env" if env_file == "none" else ROOT / env_file
    path.touch()
    refused = compose_config(path)
    assert refused.returncode != 0 and "set GRAFANA_ADMIN_PASSWORD" in refused.stderr, refused.stderr
    result = compose_config(path, GRAFANA_ADMIN_PASSWORD="chosen")
    assert result.returncode == 0, result.stderr
    # Every other substitution has a default: compose warns "The X variable is not set" otherwise.
    assert "is not set" not in result.stderr, result.stderr
    config = yaml.safe_load(result.stdout)["services"]
    assert config["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "chosen"
    # Grafana is published on loopback only, unless the operator says otherwise.
    assert config["grafana"]["ports"] == ["127.0.0.1:3000:3000/tcp"]


def test_compose_matches_the_compose_spec_schema() -> None:
    run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])


def test_compose_has_no_top_level_name(compose: dict[str, Any]) -> None:
    # `name:` is unknown to docker-compose v1; the project name comes from the folder or -p.
    assert "name" not in compose


def test_only_nginx_and_grafana_publish_ports(services: dict[str, dict[str, Any]]) -> None:
    assert {name for name, s in services.items() if s.get("ports")} == {"nginx", "grafana"}
    assert container_ports({"ports": services["nginx"]["ports"]}) == {8080}  # not the stub_status port
    assert container_ports({"ports": services["grafana"]["ports"]}) == {3000}


def test_healthy_conditions_point_at_services_with_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    conditions = {(name, dep): cond for name, s in services.items() for dep, cond in depends_on(s).items()}
    assert conditions, "no depends_on at all"
    for (name, dep), condition in conditions.items():
        assert dep in services, f"{name} depends on unknown service {dep}"
        if condition == "service_healthy":
            check = services[dep].get("healthcheck")
            healthy = check and not check.get("disable") and check.get("test")
            assert healthy, f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
    # The start order the stack relies on.
    assert conditions[("app", "scripted-llm")] == "service_healthy"
    assert conditions[("nginx-exporter", "nginx")] == "service_healthy"
    assert conditions[("grafana", "prometheus")] == "service_healthy"
    # Not nginx on the app: compose would stop them one after the other (see the compose file), and
    # the app's clean end of late streams would never reach a client. nginx's healthcheck goes through
    # to the app instead, with a start period that covers the app's start.
    assert ("nginx", "app") not in conditions
    nginx, app = services["nginx"]["healthcheck"], services["app"]["healthcheck"]
    assert seconds(nginx["start_period"]) >= seconds(app["start_period"]) + seconds(app["interval"])


def test_the_image_is_built_once(services: dict[str, dict[str, Any]]) -> None:
    # Two services building one tag race under BuildKit; the others use the tag the app builds.
    builders = [name for name, s in services.items() if "build" in s]
    assert builders == ["app"]
    assert services["scripted-llm"]["image"] == services["app"]["image"]


def test_one_setting_is_gunicorns_graceful_timeout_and_the_stop_grace_period(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("GATEWAY_GRACEFUL_TIMEOUT", raising=False)
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    setting = f"${{GATEWAY_GRACEFUL_TIMEOUT:-{conf['graceful_timeout']}}}"  # compose's default is gunicorn's
    assert services["app"]["environment"]["GATEWAY_GRACEFUL_TIMEOUT"] == setting
    # nginx drains the same streams, stopped at the same time as the app.
    assert services["app"]["stop_grace_period"] == services["nginx"]["stop_grace_period"] == f"{setting}s"
    # Streams still running end DRAIN_MARGIN seconds before gunicorn (and Docker) stop waiting.
    assert 0 < DRAIN_MARGIN < conf["graceful_timeout"]
    (tmp_path / "empty.env").touch()
    result = compose_config(tmp_path / "empty.env", GATEWAY_GRACEFUL_TIMEOUT="45", GRAFANA_ADMIN_PASSWORD="x")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)["services"]
    assert config["app"]["environment"]["GATEWAY_GRACEFUL_TIMEOUT"] == "45"
    assert config["app"]["stop_grace_period"] == config["nginx"]["stop_grace_period"] == "45s"


def test_tutorials_volume_is_shared_rw_with_app_and_ro_with_nginx(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert "tutorials" in compose["volumes"]
    app = [(t, ro) for s, t, ro in mounts(services["app"]) if s == "tutorials"]
    nginx = [(t, ro) for s, t, ro in mounts(services["nginx"]) if s == "tutorials"]
    # Where the image's settings put the tutorials (GATEWAY_DATA_DIR/tutorials), read-write.
    assert app == [(f"{image_env()['GATEWAY_DATA_DIR']}/tutorials", False)]
    assert len(nginx) == 1 and nginx[0][1], "nginx must mount the tutorials read-only"
    assert services["nginx"]["environment"]["TUTORIALS_DIR"] == nginx[0][0]


def test_nginx_reaches_the_app_on_its_unix_socket_in_a_shared_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    socket_path = services["app"]["environment"]["GATEWAY_UNIX_SOCKET"]
    assert services["nginx"]["environment"]["GATEWAY_UPSTREAM"] == f"unix:{socket_path}"
    folder = socket_path.rpartition("/")[0]
    app = [(s, ro) for s, t, ro in mounts(services["app"]) if t == folder]
    nginx = [(s, ro) for s, t, ro in mounts(services["nginx"]) if t == folder]
    assert len(app) == 1 and not app[0][1] and app[0][0] in compose["volumes"]
    assert nginx == [(app[0][0], True)]
    # gunicorn binds it next to the TCP address (health checks, Prometheus), socket mode 0777 (umask 0).
    monkeypatch.setenv("GATEWAY_UNIX_SOCKET", socket_path)
    monkeypatch.setenv("GATEWAY_BIND", image_env()["GATEWAY_BIND"])
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert conf["bind"] == ["0.0.0.0:8000", f"unix:{socket_path}"]
    assert conf.get("umask", 0) == 0
    # The image creates the folder for the app's user (a new named volume copies that ownership).
    assert folder in (ROOT / "Dockerfile").read_text()


def test_nginx_serves_the_studio_read_only_from_the_repo(services: dict[str, dict[str, Any]]) -> None:
    nginx = services["nginx"]
    studio = [(t, ro) for s, t, ro in mounts(nginx) if s == "./studio"]
    assert studio == [(nginx["environment"]["STUDIO_DIR"], True)]
    assert (ROOT / "studio" / "index.html").is_file()


def test_nginx_defines_every_template_variable(services: dict[str, dict[str, Any]]) -> None:
    # The image's envsubst leaves an undefined ${NAME} in place, and nginx then refuses the config.
    templates = list((ROOT / "nginx" / "templates").glob("*.template"))
    assert templates, "no nginx templates found"
    used = {name for t in templates for name in TEMPLATE_VAR.findall(t.read_text())}
    defined = set(services["nginx"]["environment"])
    assert used <= defined, f"not set in nginx's environment: {sorted(used - defined)}"


def test_env_example_documents_every_compose_variable() -> None:
    documented = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert compose_variables() <= documented, sorted(compose_variables() - documented)


# --- Prometheus and Grafana ---------------------------------------------------------------------------


def test_promtool_accepts_the_prometheus_config() -> None:
    # rule_files is relative to prometheus.yml, so promtool also checks the rule files themselves.
    result = run([tool("promtool"), "check", "config", "prometheus/prometheus.yml"])
    assert "rules/gateway.yml" in result.stdout + result.stderr


def test_scrape_targets_are_compose_services(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # The app by DNS, so that every replica is a target of its own (compose.replicas.yml).
    [found] = jobs["gateway"]["dns_sd_configs"]
    assert found["type"] == "A" and "static_configs" not in jobs["gateway"]
    targets = [f"{name}:{found['port']}" for name in found["names"]]
    targets += [t for sc in jobs["nginx"]["static_configs"] for t in sc["targets"]]
    assert sorted(targets) == ["app:8000", "nginx-exporter:9113"]
    for target in targets:
        host, port = target.split(":")
        assert int(port) in container_ports(services[host]), target


def test_grafana_provisioning_fits_together(services: dict[str, dict[str, Any]]) -> None:
    grafana = ROOT / "grafana"
    datasource = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yml").read_text())
    provider = yaml.safe_load((grafana / "provisioning" / "dashboards" / "gateway.yml").read_text())
    dashboard = json.loads((grafana / "dashboards" / "gateway.json").read_text())
    [source] = datasource["datasources"]
    assert (source["type"], source["uid"]) == ("prometheus", "prometheus")
    assert source["url"] == "http://prometheus:9090"
    [files] = provider["providers"]
    assert ("./grafana/dashboards", files["options"]["path"], True) in mounts(services["grafana"])
    assert (dashboard["uid"], dashboard["title"]) == ("metagpt-gateway", "MetaGPT Agent Gateway")
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert "sum(gateway_active_generations)" in exprs
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {source["uid"]}


# --- Dockerfile -------------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    result, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def image_env() -> dict[str, str]:
    """The final stage's ENV (KEY=VALUE form)."""
    pairs = [
        w.split("=", 1) for keyword, args in final_stage() if keyword == "ENV" for w in shlex.split(args)
    ]
    return dict(pairs)


def test_hadolint_passes() -> None:
    run([tool("hadolint"), "--failure-threshold", "warning", str(DOCKERFILE)])


def test_dockerfile_is_multi_stage_on_a_pinned_python() -> None:
    bases = [args.split()[0] for keyword, args in instructions() if keyword == "FROM"]
    assert len(bases) >= 2
    for base in bases:
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-\w+", base), base


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    users = [args for keyword, args in final_stage() if keyword == "USER"]
    assert users, "the final stage has no USER"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert match, f"USER {users[-1]} is not numeric"
    assert int(match.group(1)) != 0 and match.group(2) != "0"


def test_the_image_carries_the_studio() -> None:
    # Kubernetes copies it from the image into nginx's volume (deploy/kubernetes/base: /app/studio).
    steps = instructions()
    assert ("WORKDIR", "/app") in final_stage() and ("COPY", "--from=builder /app /app") in final_stage()
    assert ("COPY", "studio/ ./studio/") in steps
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert "studio" not in ignored


def test_dockerfile_has_a_healthcheck_and_a_json_cmd() -> None:
    stage = dict(final_stage())
    assert "HEALTHCHECK" in stage and "/healthz" in stage["HEALTHCHECK"]
    assert "NONE" not in stage["HEALTHCHECK"].split()
    cmd = json.loads(stage["CMD"])  # the exec form: gunicorn is PID 1 and gets SIGTERM itself
    assert cmd == ["gunicorn", "-c", "gunicorn.conf.py", "app.wsgi:application"]
    assert stage["EXPOSE"].split() == ["8000"]
