"""The gateway's one settings object: read from the environment once, then passed down.

Every variable is prefixed `GATEWAY_` (e.g. `GATEWAY_LLM_BASE_URL`). Tests build `Settings(...)` directly.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    # Upstream LLM (any OpenAI-compatible endpoint; `make run` starts the scripted one when unset).
    llm_base_url: str = "http://127.0.0.1:8081/v1"
    llm_api_key: SecretStr = SecretStr("scripted")
    llm_model: str = "scripted"
    llm_timeout_seconds: float = Field(default=120.0, gt=0, description="read timeout of one LLM call")
    llm_connect_timeout_seconds: float = Field(default=10.0, gt=0)
    # One LLM call's whole duration: an upstream that drips bytes never trips the read timeout.
    llm_max_call_seconds: float = Field(default=600.0, gt=0)
    # Bounds on what an upstream may send, far above any real reply: one call's reply, one SSE line.
    llm_max_reply_bytes: int = Field(default=8 << 20, gt=0)
    llm_max_line_bytes: int = Field(default=1 << 20, gt=0)
    # One generation's streamed content (the file it becomes), in characters.
    max_content_chars: int = Field(default=4 << 20, gt=0)
    llm_max_tokens: int = Field(default=4096, gt=0)
    # The SDK retries a refused connection or a 5xx before any token was streamed; never mid-stream.
    llm_max_retries: int = Field(default=2, ge=0)
    # Each worker looks at its upstream sockets this often and relays what arrived, all streams at once:
    # under load a token waits at most this long, and a worker wakes this often instead of once per token.
    relay_interval_ms: float = Field(default=20.0, gt=0, le=1000)
    # With few tokens arriving, a worker relays less often, up to this (never below the above): each
    # wake-up costs CPU whatever it relays. Equal to (or below) relay_interval_ms: a fixed interval.
    relay_max_interval_ms: float = Field(default=50.0, gt=0, le=1000)

    # Where files go. Absolute paths only: nothing is written relative to the working directory.
    data_dir: Path = Path("/var/lib/metagpt-gateway")
    tutorials_dir: Path | None = None  # default: <data_dir>/tutorials (what nginx serves)
    metagpt_root: Path | None = None  # default: <data_dir>/metagpt (MetaGPT's logs, workspace)
    # MetaGPT logs every prompt and reply to a DEBUG file under its root; off unless asked for.
    metagpt_prompt_log: bool = False
    metagpt_log_level: str = "WARNING"  # MetaGPT logs whole replies at INFO
    log_level: str = "INFO"

    # The files folder. Below this much free space, readiness is false and new generations are refused
    # before any work (a write that fails anyway is `storage_full` / `storage_error`, not `agent_error`).
    min_free_bytes: int = Field(default=64 << 20, ge=0)
    # Retention, enforced by one worker (app.retention): files older than `retention_seconds` go, then
    # the oldest while the folder holds more than `retention_max_bytes`; 0 turns either off. Neither
    # removes a file younger than `retention_grace_seconds` (it was just linked). Checked every
    # `retention_interval_seconds`.
    retention_seconds: int = Field(default=30 * 24 * 3600, ge=0)
    retention_max_bytes: int = Field(default=1 << 30, ge=0)
    retention_grace_seconds: int = Field(default=3600, ge=0)
    retention_interval_seconds: float = Field(default=300.0, gt=0)

    # S3-compatible object storage for the files instead of the folder (several hosts share it): on when
    # `s3_bucket` is set. Path-style addresses; an empty endpoint is AWS's for `s3_region`. Downloads go
    # through nginx, which fetches a presigned URL valid for `s3_url_seconds` from the private bucket.
    s3_bucket: str = ""
    s3_endpoint: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_prefix: str = "tutorials/"
    s3_url_seconds: int = Field(default=60, gt=0, le=7 * 24 * 3600)
    s3_timeout_seconds: float = Field(default=30.0, gt=0, description="one S3 request, all of it")

    # A fleet-wide limit on running generations, kept in Redis (on when both are set), on top of the
    # server's own. Each worker renews its generations' slots every third of `global_slot_ttl_seconds`:
    # a killed host's slots free themselves within it. Without Redis, `global_limit_on_redis_down` says
    # what admission does: `local` (the server's own limit only) or `refuse` (503).
    redis_url: SecretStr | None = None
    global_max_generations: int = Field(default=0, ge=0)
    global_slot_ttl_seconds: float = Field(default=10.0, ge=1.0, le=3600)
    global_limit_on_redis_down: Literal["local", "refuse"] = "local"

    # Stored responses (the Responses API): kept this long after their last write; in Redis when
    # `redis_url` is set (any host can read them), else in <data_dir>/responses (this host's workers).
    responses_ttl_seconds: float = Field(default=86400.0, gt=0)

    # Links and agent options. With API keys, download links are signed and expire after this long;
    # the secret defaults to one derived from the keys (set it to keep links across key rotations).
    link_ttl_seconds: int = Field(default=7 * 24 * 3600, gt=0)
    link_secret: SecretStr | None = None
    public_base_url: str | None = None  # e.g. https://tutorials.example.com; else from forwarded headers
    trusted_proxies: int = Field(default=1, ge=0, description="X-Forwarded-* hops to trust")
    default_language: str = "English"
    # Chat UIs' housekeeping requests (titles, follow-ups, tags) go to the upstream LLM as they are,
    # not to an agent: regular expressions matched at the start of the last user message (JSON list
    # in the environment; [] turns it off). The default is Open WebUI's task prompts.
    housekeeping_patterns: list[str] = ["### Task:"]

    # Streaming.
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    # A new connection to gunicorn must deliver its first request head within this (as nginx's
    # client_header_timeout): slow connections cannot hold a worker's connection slots for long.
    header_timeout_seconds: float = Field(default=15.0, gt=0)
    # A client that takes none of a stream's bytes for this long is treated as gone (nginx reads at
    # once; this bounds a client connected straight to gunicorn), as nginx's send_timeout.
    send_timeout_seconds: float = Field(default=60.0, gt=0)
    # How long a stream waits for the agent's first event before sending headers; an upstream failure
    # inside this window becomes a proper HTTP status instead of an error event.
    first_event_wait_seconds: float = Field(default=3.0, ge=0)
    max_body_bytes: int = Field(default=1 << 20, gt=0)

    # Admission and limits. The server (all workers together) runs at most workers x this many generations;
    # past it, 429 before any work.
    max_generations_per_worker: int = Field(default=200, gt=0)
    max_generation_seconds: float = Field(default=900.0, gt=0)
    max_messages: int = Field(default=256, gt=0)
    max_message_chars: int = Field(default=100_000, gt=0)
    max_topic_chars: int = Field(default=4_000, gt=0)

    # Optional API keys: a comma-separated list and/or a file with one key per line. None: open access.
    api_keys: SecretStr | None = None
    api_keys_file: Path | None = None

    @field_validator("data_dir", "tutorials_dir", "metagpt_root", "api_keys_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"must be an absolute path, got {str(value)!r}")
        return value

    @field_validator("llm_api_key", mode="before")
    @classmethod
    def _header_value(cls, value: object) -> object:
        """The key goes into an HTTP header: a CRLF .env's trailing `\r` is dropped; a line break
        inside would inject headers, and only Latin-1 can be sent."""
        if isinstance(value, str):
            value = value.strip()
            if any(ch in value for ch in "\r\n\x00"):
                raise ValueError("must be one line (it contains a line break or NUL)")
            try:
                value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError("may contain only Latin-1 characters (it is sent in a header)") from None
        return value

    @field_validator("api_keys")
    @classmethod
    def _bearer_tokens(cls, value: SecretStr | None) -> SecretStr | None:
        """Each key is a bearer token (RFC 6750's b64token): letters, digits and `-._~+/`, then `=`s.
        nginx reads them too, to limit clients per key (nginx/templates), so nothing else may appear."""
        if value is not None:
            for key in value.get_secret_value().split(","):
                if key.strip() and not _BEARER_TOKEN.fullmatch(key.strip()):
                    raise ValueError(
                        "each comma-separated key may contain only letters, digits and -._~+/ "
                        "(then trailing =), as a bearer token"
                    )
        return value

    @field_validator("llm_base_url")
    @classmethod
    def _llm_url(cls, value: str) -> str:
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s) URL such as https://api.openai.com/v1, got {value!r}")
        if parts.username or parts.password:
            raise ValueError("must not carry a user name or password: put the key in GATEWAY_LLM_API_KEY")
        if any(ch in value for ch in "\r\n\x00 "):
            raise ValueError("must not contain spaces or line breaks")
        return value

    @classmethod
    def load(cls) -> Settings:
        """The settings from the environment. On a bad value: one line on stderr naming each variable,
        and exit status 3, gunicorn's "worker failed to boot", so the master stops instead of
        restarting workers that cannot start."""
        try:
            return cls()
        except ValidationError as exc:
            problems = [
                f"GATEWAY_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
                for error in exc.errors()
            ]
            print("invalid configuration: " + "; ".join(problems), file=sys.stderr, flush=True)
            raise SystemExit(3) from None

    @field_validator("s3_endpoint")
    @classmethod
    def _s3_endpoint(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
                raise ValueError(f"must be an http(s) origin such as http://seaweedfs:8333, got {value!r}")
            if parts.username or parts.password:
                raise ValueError("must not carry credentials (GATEWAY_S3_ACCESS_KEY_ID/_SECRET_ACCESS_KEY)")
        return value

    @field_validator("s3_bucket")
    @classmethod
    def _s3_bucket(cls, value: str) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
            raise ValueError(f"must be an S3 bucket name (3-63 of a-z 0-9 . -), got {value!r}")
        return value

    @field_validator("s3_prefix")
    @classmethod
    def _s3_prefix(cls, value: str) -> str:
        if value and not re.fullmatch(r"(?:[A-Za-z0-9._-]+/)+", value):
            raise ValueError(f"must be empty or folder names, each ending in '/' (tutorials/), got {value!r}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value():
            if urlsplit(value.get_secret_value()).scheme not in ("redis", "rediss", "unix"):
                raise ValueError("must be a redis://, rediss:// or unix:// URL")
            return value
        return None

    @field_validator("public_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
                raise ValueError(f"must be an http or https URL such as https://example.com, got {value!r}")
        return value or None

    @property
    def tutorials_path(self) -> Path:
        return self.tutorials_dir or self.data_dir / "tutorials"

    @property
    def metagpt_root_path(self) -> Path:
        return self.metagpt_root or self.data_dir / "metagpt"

    @property
    def global_limit(self) -> int:
        """The fleet-wide limit on running generations, 0 when off (no Redis or no limit)."""
        return self.global_max_generations if self.redis_url is not None else 0

    def api_key_list(self) -> list[str]:
        keys = [k.strip() for k in (self.api_keys.get_secret_value() if self.api_keys else "").split(",")]
        if self.api_keys_file is not None:
            keys += [line.strip() for line in self.api_keys_file.read_text().splitlines()]
        return [k for k in keys if k and not k.startswith("#")]
