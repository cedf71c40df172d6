"""The worker's services, one typed object on the Flask app (flaskr's `get_db`/`init_app` pattern).

Built once by `create_app`; read in a request with `services()`, elsewhere with `services(app)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

if TYPE_CHECKING:
    from app.agents.base import Registry
    from app.agents.housekeeping import Housekeeping
    from app.api.auth import Authenticator
    from app.api.links import LinkSigner
    from app.lifecycle import Lifecycle
    from app.metrics import Metrics
    from app.response_store import ResponseStore
    from app.retention import Retention
    from app.runtime.bridge import AsyncioBridge
    from app.runtime.llm import Runtime
    from app.settings import Settings
    from app.storage import TutorialStore

_KEY = "gateway"


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: TutorialStore  # the folder (app.storage.FileStore) or S3 (app.object_store.ObjectStore)
    metrics: Metrics
    registry: Registry
    housekeeping: Housekeeping  # what answers chat UIs' own requests instead of an agent
    runtime: Runtime  # MetaGPT's side: LLM configuration, the upstream client
    bridge: AsyncioBridge
    lifecycle: Lifecycle
    auth: Authenticator
    links: LinkSigner | None  # signs download links when API keys are required
    openapi: dict[str, Any]
    # The folder's (None on S3); started by gunicorn's worker (app.transport.worker), not by the app.
    retention: Retention | None
    responses: ResponseStore  # the Responses API's stored responses


def init_app(app: Flask, services: Services) -> None:
    app.extensions[_KEY] = services


def services(app: Flask | None = None) -> Services:
    """The services of `app`, or of the app handling the current request."""
    found: Services = (app or current_app).extensions[_KEY]
    return found
