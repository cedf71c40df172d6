"""The servers of the root namespace, on the bridge's address: the scripted LLM, S3 (SeaweedFS), Redis,
Prometheus (file_sd discovery of the hosts) and nginx at the edge (on 127.0.0.1, in front of the hosts)."""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from scripts.nginx_local import prepare as prepare_nginx
from tests.fleet.daemons import Daemon, free_port_on, http_ok, reserved_port_on
from tests.procs import ROOT, nginx_args, prometheus_args, scripted_llm_args

WEED = ROOT / ".venv-tools" / "bin" / "weed"
S3_ACCESS_KEY = "fleet-test-access"
S3_SECRET_KEY = "fleet-test-secret-0123456789"
S3_REGION = "us-east-1"


def llm(address: str, folder: Path, pace: float) -> tuple[Daemon, str]:
    """The scripted LLM on `address` (not started) and its URL, without /v1."""
    port = free_port_on(address)
    args = scripted_llm_args(port, pace)
    args[args.index("127.0.0.1")] = address
    url = f"http://{address}:{port}"
    log = folder / "scripted_llm.log"
    return Daemon("scripted LLM", args, log, http_ok(f"{url}/healthz"), startup_timeout=30), url


@dataclass
class S3:
    """SeaweedFS (`weed server -s3`): every port explicit, telemetry and the extra listeners off, its
    logs and local sockets in `folder`, one identity with the test's keys."""

    address: str
    folder: Path
    ports: dict[str, int] = field(default_factory=dict)
    daemon: Daemon | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}:{self.ports['s3.port']}"

    def start(self) -> None:
        if not WEED.exists():
            raise RuntimeError(f"{WEED} is missing: run scripts/install_tools.sh")
        for name in ("master", "volume", "filer", "s3"):
            # gRPC ports default to http + 10000, invalid above 55535: both chosen here, below the
            # ephemeral range (reserved_port_on says why).
            for flag in (f"{name}.port", f"{name}.port.grpc"):
                while (port := reserved_port_on(self.address)) in self.ports.values():
                    pass
                self.ports[flag] = port
        (self.folder / "data").mkdir(parents=True)
        (self.folder / "logs").mkdir()
        identities = {
            "identities": [
                {
                    "name": "gateway",
                    "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.folder / "identities.json").write_text(json.dumps(identities))
        ports = [f"-{flag}={port}" for flag, port in self.ports.items()]
        args = [
            str(WEED),
            f"-logdir={self.folder / 'logs'}",
            "server",
            f"-dir={self.folder / 'data'}",
            f"-ip={self.address}",
            f"-ip.bind={self.address}",
            *ports,
            "-s3",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.folder / 'identities.json'}",
            f"-s3.localSocket={self.folder / 's3.sock'}",
            f"-filer.localSocket={self.folder / 'filer.sock'}",
            "-master.telemetry=false",
            # Each bucket is a collection that grows several volumes at its first write: room for many
            # buckets (volumes are sparse files: small ones cost nothing).
            "-master.volumeSizeLimitMB=32",
            "-volume.max=100",
        ]
        # NOTE: SeaweedFS does not stop on SIGTERM within seconds: SIGKILL at once.
        self.daemon = Daemon(
            "SeaweedFS", args, self.folder / "weed.log", http_ok(f"{self.endpoint}/healthz"), stop_grace=0
        )
        self.daemon.start()

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.kill()
        # Its gRPC sockets go to /tmp whatever the flags say; only this run's (by port) are removed.
        for name in ("master", "volume", "filer", "s3"):
            Path(f"/tmp/seaweedfs-{name}-grpc-{self.ports.get(f'{name}.port.grpc')}.sock").unlink(
                missing_ok=True
            )

    def client(self) -> Any:
        """The test's own S3 client (boto3), with the gateway's keys."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
            region_name=S3_REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def env(self, bucket: str, endpoint: str | None = None) -> dict[str, str]:
        """The gateway's settings for `bucket` (through `endpoint` if given, e.g. a relay)."""
        return {
            "GATEWAY_S3_BUCKET": bucket,
            "GATEWAY_S3_ENDPOINT": endpoint or self.endpoint,
            "GATEWAY_S3_REGION": S3_REGION,
            "GATEWAY_S3_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "GATEWAY_S3_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        }

    def keys(self, bucket: str) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket)
        return [item["Key"] for item in listed.get("Contents", [])]


@dataclass
class Redis:
    address: str
    folder: Path
    port: int = 0
    daemon: Daemon | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.address}:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def _ping(self) -> bool:
        with contextlib.suppress(Exception), self.client() as client:
            return bool(client.ping())
        return False

    def start(self) -> None:
        """Start (again): an empty store, nothing saved."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port_on(self.address)
        conf = self.folder / "redis.conf"
        bind = " ".join(dict.fromkeys([self.address, "127.0.0.1"]))
        conf.write_text(
            f'bind {bind}\nport {self.port}\nsave ""\nappendonly no\n'
            f'dir {self.folder}\nprotected-mode no\ndaemonize no\nlogfile ""\n'
        )
        redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.daemon = Daemon("Redis", [redis_server, str(conf)], self.folder / "redis.log", self._ping)
        self.daemon.stop_grace = 5
        self.daemon.start()

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()


@dataclass
class Prometheus:
    folder: Path
    port: int = 0
    daemon: Daemon | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, targets: list[str]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.discover(targets)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "gateway",
                    "file_sd_configs": [
                        {"files": [str(self.folder / "targets.json")], "refresh_interval": "1s"}
                    ],
                }
            ],
        }
        (self.folder / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.port = free_port_on("127.0.0.1")
        args = prometheus_args(self.folder / "prometheus.yml", self.folder / "tsdb", self.port)
        self.daemon = Daemon(
            "Prometheus", args, self.folder / "prometheus.log", http_ok(f"{self.url}/-/ready")
        )
        self.daemon.start()

    def discover(self, targets: list[str]) -> None:
        """The file Prometheus watches: the hosts to scrape."""
        temp = self.folder / "targets.json.tmp"
        temp.write_text(json.dumps([{"targets": targets, "labels": {"fleet": "test"}}]))
        temp.replace(self.folder / "targets.json")

    def query(self, expr: str) -> list[dict[str, Any]]:
        reply = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5).json()
        assert reply["status"] == "success", reply
        return list(reply["data"]["result"])

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()


def edge(folder: Path, upstreams: list[str], extra: dict[str, str] | None = None) -> tuple[Daemon, str]:
    """nginx as deployed (the rendered template) on 127.0.0.1 in front of `upstreams`, with per-client
    limits far above what a test sends (the tests' clients all come from one address)."""
    port, status_port = free_port_on("127.0.0.1"), free_port_on("127.0.0.1")
    empty = folder / "no-tutorials"  # every download goes to a host (S3), none to a local folder
    empty.mkdir(parents=True, exist_ok=True)
    conf = prepare_nginx(
        folder,
        listen=f"127.0.0.1:{port}",
        status_listen=f"127.0.0.1:{status_port}",
        upstream=upstreams,
        tutorials_dir=empty,
        limits={
            "NGINX_STREAMS_PER_CLIENT": "1000",
            "NGINX_RATE_PER_CLIENT": "10000",
            "NGINX_RATE_BURST": "10000",
            "GATEWAY_MAX_GENERATION_SECONDS": "120",
            **(extra or {}),
        },
    )
    url = f"http://127.0.0.1:{port}"
    daemon = Daemon("nginx", nginx_args(folder, conf), folder / "stdout.log", http_ok(f"{url}/healthz"))
    return daemon, url
