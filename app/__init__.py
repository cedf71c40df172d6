"""MetaGPT Agent Gateway: MetaGPT agents behind an OpenAI-compatible streaming API."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from app.settings import Settings

if TYPE_CHECKING:
    from app.response_store import ResponseStore


def create_app(settings: Settings | None = None) -> Flask:
    """Wire the app. Starts nothing: the asyncio bridge starts on the first generation."""
    settings = settings or Settings.load()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from app.runtime import metagpt_env

    metagpt_env.prepare(settings)  # NOTE: must precede every metagpt import, hence the imports below
    metagpt_env.configure_logging(settings)
    metagpt_env.cache_models_config()
    from app import capacity, services
    from app.agents.housekeeping import Housekeeping
    from app.agents.registry import build_registry
    from app.api import auth, completions, files, health, models, responses
    from app.api.links import LinkSigner
    from app.errors import register_error_handlers
    from app.lifecycle import Lifecycle
    from app.metrics import Metrics
    from app.retention import Retention
    from app.runtime.bridge import AsyncioBridge
    from app.runtime.llm import Runtime
    from app.storage import FileStore, TutorialStore

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if settings.trusted_proxies:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n, x_prefix=n)  # type: ignore[method-assign]

    metrics = Metrics()
    store: TutorialStore
    retention: Retention | None = None  # S3: the bucket's lifecycle rule (app.object_store.apply_lifecycle)
    if settings.s3_bucket:
        from app.object_store import ObjectStore

        store = ObjectStore(settings)
    else:
        folder = FileStore(settings.tutorials_path)
        folder.ensure()
        store = folder
        retention = Retention(
            folder.folder,
            metrics,
            max_age=settings.retention_seconds,
            max_bytes=settings.retention_max_bytes,
            grace=settings.retention_grace_seconds,
            interval=settings.retention_interval_seconds,
        )
    fleet = None
    if settings.global_limit and settings.redis_url is not None:
        from app.fleet_limit import FleetLimit

        fleet = FleetLimit(
            settings.redis_url.get_secret_value(),
            settings.global_limit,
            settings.global_slot_ttl_seconds,
            settings.global_limit_on_redis_down,
            metrics,
        )
    metrics.max_generations.set(settings.max_generations_per_worker)
    metrics.files_min_free_bytes.set(settings.min_free_bytes)
    registry = build_registry()
    metrics.start_at_zero([agent.id for agent in registry] + [Housekeeping.id])
    keys = settings.api_key_list()
    authenticator = auth.Authenticator(keys)
    links = None  # without keys a link needs no signature
    if keys:
        secret = settings.link_secret.get_secret_value().encode() if settings.link_secret else None
        ttl = settings.link_ttl_seconds
        links = LinkSigner(secret, ttl) if secret else LinkSigner.from_keys(keys, ttl)
    services.init_app(
        app,
        services.Services(
            settings=settings,
            store=store,
            metrics=metrics,
            registry=registry,
            housekeeping=Housekeeping(settings.housekeeping_patterns),
            runtime=Runtime(settings, store, metrics),
            bridge=AsyncioBridge(),
            lifecycle=Lifecycle(settings.max_generations_per_worker, capacity.shared(), fleet),
            auth=authenticator,
            links=links,
            openapi=health.load_openapi(),
            retention=retention,
            responses=open_response_store(settings),
        ),
    )
    auth.install(app, authenticator, links)

    register_error_handlers(app)
    for module in (completions, responses, models, files, health):
        app.register_blueprint(module.bp)
    return app


def open_response_store(settings: Settings) -> ResponseStore:
    """Redis when configured (every host reads every response), else a folder this host's workers share."""
    from app.response_store import LocalResponseStore, RedisResponseStore

    if settings.redis_url is not None:
        return RedisResponseStore(settings.redis_url.get_secret_value(), settings.responses_ttl_seconds)
    store = LocalResponseStore(settings.data_dir / "responses", settings.responses_ttl_seconds)
    store.ensure()
    return store
