"""Signed download links: valid for their name until they expire, and only then."""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest
from pydantic import SecretStr

from app import create_app
from app.api.links import LinkSigner
from app.storage import FileStore

NAME = "MySQL-" + "a" * 32 + ".md"


def test_a_link_opens_its_file_until_it_expires():
    links = LinkSigner(b"secret", ttl_seconds=60)
    query = links.query(NAME, now=1000)
    assert parse_qs(query)["expires"] == ["1060"]
    assert links.accepts(NAME, query, now=1059)
    assert not links.accepts(NAME, query, now=1061)  # expired


def test_a_tampered_or_borrowed_link_is_refused():
    links = LinkSigner(b"secret", ttl_seconds=60)
    query = links.query(NAME, now=1000)
    assert not links.accepts("Other-" + "b" * 32 + ".md", query, now=1000)  # another file's link
    assert not links.accepts(NAME, query.replace("expires=1060", "expires=9999"), now=1000)  # extended
    assert not LinkSigner(b"other secret", 60).accepts(NAME, query, now=1000)
    for bad in ("", "expires=1060", "signature=x", "expires=x&signature=y", "expires=1060&signature="):
        assert not links.accepts(NAME, bad, now=1000)


def test_processes_sharing_the_keys_check_each_others_links():
    one, other = LinkSigner.from_keys(["k2", "k1"], 60), LinkSigner.from_keys(["k1", "k2"], 60)
    assert other.accepts(NAME, one.query(NAME))
    assert not LinkSigner.from_keys(["k3"], 60).accepts(NAME, one.query(NAME))


@pytest.fixture
def keyed(settings):
    app = create_app(settings.model_copy(update={"api_keys": SecretStr("k1")}))
    store = FileStore(settings.tutorials_path)
    store.write(NAME, b"# MySQL\n")
    return app.test_client(), LinkSigner.from_keys(["k1"], 60)


def test_with_keys_a_download_needs_the_key_or_a_signed_link(keyed):
    client, links = keyed
    assert client.get(f"/download/{NAME}").status_code == 401
    assert client.get(f"/download/{NAME}", headers={"Authorization": "Bearer k1"}).status_code == 200
    assert client.get(f"/download/{NAME}?{links.query(NAME)}").data == b"# MySQL\n"
    assert client.get(f"/download/{NAME}?{links.query(NAME, now=0)}").status_code == 401  # expired


def test_nginx_asks_about_the_uri_it_is_about_to_serve(keyed):
    client, links = keyed
    ok = {"X-Original-URI": f"/download/{NAME}?{links.query(NAME)}"}
    assert client.get("/auth/check", headers=ok).status_code == 204
    other = {"X-Original-URI": f"/download/Other-{'b' * 32}.md?{links.query(NAME)}"}
    assert client.get("/auth/check", headers=other).status_code == 401
    api = {"X-Original-URI": f"/v1/models?{links.query(NAME)}"}  # a link opens its file only
    assert client.get("/auth/check", headers=api).status_code == 401
    r = client.get(f"/v1/models?{links.query(NAME)}")
    assert r.status_code == 401 and r.json["error"]["code"] == "invalid_api_key"
