"""Optional API keys: `Authorization: Bearer <key>`, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import logging
from urllib.parse import unquote, urlsplit

from flask import Flask, request

from app.api.links import LinkSigner
from app.errors import Unauthorized
from app.storage import is_valid_name

# Open whatever the keys: probes, Prometheus (never routed through the public nginx server).
OPEN_ENDPOINTS = {"health.healthz", "health.readyz", "health.metrics", "health.openapi"}


class Authenticator:
    def __init__(self, keys: list[str]) -> None:
        # Digests have one length, so compare_digest's time does not depend on the key's length.
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, authorization: str | None) -> bool:
        if not self.enabled:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        candidate = hashlib.sha256(token.strip().encode()).digest()
        found = False
        for digest in self._digests:  # no early exit: every key is compared
            found |= hmac.compare_digest(candidate, digest)
        return found and scheme.lower() == "bearer"


def _signed_download(links: LinkSigner) -> bool:
    """Whether the request is a download by a valid signed link: the app's own download route, or
    nginx asking (`/auth/check`) about the URI it is about to serve (`X-Original-URI`)."""
    if request.endpoint == "files.download":
        name, query = request.view_args["name"] if request.view_args else "", request.query_string.decode()
    elif request.endpoint == "files.auth_check":
        uri = urlsplit(request.headers.get("X-Original-URI", ""))
        if not uri.path.startswith("/download/"):
            return False
        name, query = unquote(uri.path.removeprefix("/download/")), uri.query
    else:
        return False
    return is_valid_name(name) and links.accepts(name, query)


def install(app: Flask, authenticator: Authenticator, links: LinkSigner | None = None) -> None:
    if not authenticator.enabled:
        # Serving without keys is a choice the operator must see (issue 16), not a silent default.
        logging.getLogger(__name__).warning(
            "No API keys configured (GATEWAY_API_KEYS, GATEWAY_API_KEYS_FILE): anyone who can reach the "
            "gateway may run agents and download every tutorial."
        )

    @app.before_request
    def _require_key() -> None:
        if request.endpoint in OPEN_ENDPOINTS:
            return
        if authenticator.accepts(request.headers.get("Authorization")):
            return
        if links is not None and _signed_download(links):
            return
        raise Unauthorized(
            "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'"
            + (", or use the download link as it was given (it may have expired)." if links else "."),
            headers={"WWW-Authenticate": 'Bearer realm="metagpt-gateway"'},
        )
