"""Download links that open in a browser when API keys are required: signed and expiring.

A person clicking the link in a chat UI cannot send an `Authorization` header, and the link must not
carry the API key. With keys configured, a link carries `expires` (a Unix time) and `signature`, an
HMAC-SHA256 (itsdangerous) over the file's name and the expiry, with `GATEWAY_LINK_SECRET`, or else a
secret derived from the API keys, so every worker and host that shares the keys checks every link.
nginx still sends the bytes: its `auth_request` asks the app, which accepts a valid key or a valid,
unexpired link for that very name.
"""

from __future__ import annotations

import hashlib
import time
from urllib.parse import parse_qs, quote

from itsdangerous import Signer


class LinkSigner:
    def __init__(self, secret: bytes, ttl_seconds: int) -> None:
        self._signer = Signer(secret, salt="gateway-download-link", digest_method=hashlib.sha256)
        self.ttl_seconds = ttl_seconds

    @classmethod
    def from_keys(cls, keys: list[str], ttl_seconds: int) -> LinkSigner:
        """A secret every process with the same API keys derives alike (rotating the keys voids the links)."""
        return cls(hashlib.sha256("\0".join(["gateway-links", *sorted(keys)]).encode()).digest(), ttl_seconds)

    def query(self, name: str, now: float | None = None) -> str:
        """The query string that lets `name` be downloaded until `ttl_seconds` from now."""
        expires = int(now if now is not None else time.time()) + self.ttl_seconds
        signature = self._signer.get_signature(f"{name}:{expires}").decode()
        return f"expires={expires}&signature={quote(signature)}"

    def accepts(self, name: str, query: str, now: float | None = None) -> bool:
        """Whether `query` (a link's query string) is a valid, unexpired signature for `name`."""
        fields = parse_qs(query, max_num_fields=4)
        expires, signature = fields.get("expires", [""])[0], fields.get("signature", [""])[0]
        if not expires.isdigit() or not signature:
            return False
        if int(expires) < (now if now is not None else time.time()):
            return False
        return self._signer.verify_signature(f"{name}:{expires}", signature.encode())
