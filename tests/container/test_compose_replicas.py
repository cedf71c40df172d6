"""compose.replicas.yml on top of docker-compose.yml, checked without a Docker engine: what docker-compose
renders from the two, against the compose-spec schema and for what replicas need. The overlay does not run
in test_compose_stack.py: Debian's nginx 1.22, the stand-in for the nginx image there, has no
`server ... resolve` (nginx >= 1.27.3).

The tools are installed by scripts/install_os_deps.sh (docker-compose) and scripts/install_tools.sh
(check-jsonschema); a missing one fails the test, as in tests/integration/test_deploy_files.py.
"""

from __future__ import annotations

import os
import re
import runpy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.procs import tool

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "docker-compose.yml", ROOT / "compose.replicas.yml"]
COMPOSE_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)")


def render(tmp_path: Path, **variables: str) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """`docker-compose -f docker-compose.yml -f compose.replicas.yml config`, with every variable the files
    name unset (so their defaults show), but those given."""
    names = {n for f in FILES for n in COMPOSE_VAR.findall(f.read_text())}
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith("COMPOSE_")}
    (tmp_path / "empty.env").touch()  # --env-file: a developer's own .env decides nothing here
    args = [tool("docker-compose"), *(a for f in FILES for a in ("-f", str(f)))]
    args += ["--env-file", str(tmp_path / "empty.env"), "config"]
    done = subprocess.run(
        args,
        cwd=ROOT,
        env={**env, "GRAFANA_ADMIN_PASSWORD": "chosen", **variables},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout), done


def test_the_overlay_renders_and_matches_the_compose_spec_schema(tmp_path: Path) -> None:
    config, done = render(tmp_path)
    assert "is not set" not in done.stderr, done.stderr  # every variable of the overlay has a default
    (tmp_path / "rendered.yml").write_text(done.stdout)
    for path in (ROOT / "compose.replicas.yml", tmp_path / "rendered.yml"):
        checked = subprocess.run(
            [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    assert set(config["services"]) == set(yaml.safe_load(FILES[0].read_text())["services"]) | {"redis"}


def test_nginx_reaches_every_replica_over_tcp_by_dns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services = render(tmp_path)[0]["services"]
    nginx, app = services["nginx"]["environment"], services["app"]["environment"]
    assert nginx["GATEWAY_UPSTREAM"] == "app:8000 resolve"
    assert nginx["NGINX_RESOLVER"] == "127.0.0.11"  # Docker's DNS
    assert "8000" in [str(port) for port in services["app"]["expose"]]
    # No Unix socket: gunicorn binds the image's TCP address only.
    assert app["GATEWAY_UNIX_SOCKET"] == ""
    monkeypatch.setenv("GATEWAY_UNIX_SOCKET", app["GATEWAY_UNIX_SOCKET"])
    monkeypatch.setenv("GATEWAY_BIND", "0.0.0.0:8000")  # the Dockerfile's
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["bind"] == ["0.0.0.0:8000"]
    # The upstream picks the least busy replica and shares its state (which `resolve` requires).
    template = (ROOT / "nginx" / "templates" / "gateway.conf.template").read_text()
    upstream = re.search(r"upstream gateway_app \{(.*?)\n\}", template, re.S)
    assert upstream is not None
    lines = [line.strip() for line in upstream.group(1).splitlines() if not line.strip().startswith("#")]
    assert {"least_conn;", "server ${GATEWAY_UPSTREAM};"} <= set(lines)
    assert any(line.startswith("zone gateway_app ") for line in lines)
    assert re.search(r"^resolver \$\{NGINX_RESOLVER\} valid=\d+s ipv6=off;$", template, re.M)


def test_replicas_scale_and_share_the_tutorials_volume(tmp_path: Path) -> None:
    services = render(tmp_path)[0]["services"]
    app = services["app"]
    assert app["deploy"]["replicas"] == 3
    # Nothing a second replica would clash on: a fixed name or a host port.
    assert "container_name" not in app and "ports" not in app
    # docker-compose v1 renders the short syntax (source:target:mode), v2 the long one.
    mounts = [v.split(":") if isinstance(v, str) else [v["source"], v["target"]] for v in app["volumes"]]
    tutorials = [m for m in mounts if m[0] == "tutorials"]
    assert len(tutorials) == 1 and "ro" not in tutorials[0][2:], tutorials
    assert render(tmp_path, GATEWAY_REPLICAS="5")[0]["services"]["app"]["deploy"]["replicas"] == 5


def test_the_global_limit_is_off_unless_chosen(tmp_path: Path) -> None:
    services = render(tmp_path)[0]["services"]
    app = services["app"]
    assert app["environment"]["GATEWAY_GLOBAL_MAX_GENERATIONS"] == "0"
    assert app["environment"]["GATEWAY_GLOBAL_LIMIT_ON_REDIS_DOWN"] == "local"
    # Redis starts only with `--profile global-limit`, so the app cannot wait for it.
    assert services["redis"]["profiles"] == ["global-limit"]
    assert "redis" not in app.get("depends_on", {})
    host, port = app["environment"]["GATEWAY_REDIS_URL"].removeprefix("redis://").split("/")[0].split(":")
    assert host == "redis" and port in [str(p) for p in services["redis"]["expose"]]
    limited = render(tmp_path, GATEWAY_GLOBAL_MAX_GENERATIONS="60")[0]["services"]["app"]
    assert limited["environment"]["GATEWAY_GLOBAL_MAX_GENERATIONS"] == "60"
