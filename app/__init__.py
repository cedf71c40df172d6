"""MetaGPT Agent Gateway: MetaGPT agents behind an OpenAI-compatible streaming API."""

from __future__ import annotations

import logging

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from app.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Wire the app. Starts nothing: the asyncio bridge starts on the first generation."""
    settings = settings or Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from app import metagpt_env

    metagpt_env.prepare(settings)  # NOTE: must precede every metagpt import, hence the imports below
    metagpt_env.configure_logging(settings)
    metagpt_env.cache_models_config()
    from app import auth
    from app.agents.registry import build_registry
    from app.bridge import AsyncioBridge
    from app.errors import register_error_handlers
    from app.lifecycle import Lifecycle
    from app.llm import Runtime
    from app.metrics import Metrics
    from app.routes import completions, files, health, models
    from app.storage import TutorialStore

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if settings.trusted_proxies:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n, x_prefix=n)  # type: ignore[method-assign]

    store = TutorialStore(settings.tutorials_path)
    store.ensure()
    metrics = Metrics()
    metrics.max_generations.set(settings.max_generations_per_worker)
    app.extensions["gateway.settings"] = settings
    app.extensions["gateway.store"] = store
    app.extensions["gateway.metrics"] = metrics
    app.extensions["gateway.registry"] = build_registry()
    app.extensions["gateway.runtime"] = Runtime(settings, store, metrics)
    app.extensions["gateway.bridge"] = AsyncioBridge()
    app.extensions["gateway.lifecycle"] = Lifecycle(settings.max_generations_per_worker)
    app.extensions["gateway.openapi"] = health.load_openapi()
    auth.install(app, auth.Authenticator(settings.api_key_list()))

    register_error_handlers(app)
    for module in (completions, models, files, health):
        app.register_blueprint(module.bp)
    return app
