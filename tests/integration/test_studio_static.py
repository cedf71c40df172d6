"""The studio's static files through the real nginx (the rendered template, STUDIO_DIR = the repo's
studio/): the page at /, its files under /studio/ with their types and the page's security headers, and
nothing outside the folder; everything else is as before (JSON errors, /metrics not public)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.integration.test_nginx import assert_json_error

pytestmark = pytest.mark.integration

STUDIO = Path(__file__).resolve().parents[2] / "studio"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "application/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml; charset=utf-8",
    ".png": "image/png",
}


def assert_studio_headers(r: httpx.Response) -> None:
    assert r.headers["content-security-policy"] == CSP
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"


def test_the_page_is_served_at_the_root_with_its_policy(proxied):
    r = httpx.get(f"{proxied.url}/", timeout=5)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == TYPES[".html"]
    assert r.content == (STUDIO / "index.html").read_bytes()
    assert '<main id="studio"' in r.text
    assert_studio_headers(r)
    # The same file at its own name; a second request with the validators is a 304, not the bytes again.
    again = httpx.get(f"{proxied.url}/studio/index.html", timeout=5)
    assert again.status_code == 200 and again.content == r.content
    revalidated = httpx.get(f"{proxied.url}/", headers={"If-None-Match": r.headers["etag"]}, timeout=5)
    assert revalidated.status_code == 304 and revalidated.content == b""


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("vendor/marked.umd.js", ".js"),
        ("vendor/purify.min.js", ".js"),
        ("vendor/highlight.min.js", ".js"),
        ("vendor/a11y-light.min.css", ".css"),
        ("vendor/a11y-dark.min.css", ".css"),
    ],
)
def test_a_file_under_studio_has_its_type_and_the_pages_headers(proxied, path, kind):
    r = httpx.get(f"{proxied.url}/studio/{path}", timeout=5)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == TYPES[kind]
    assert r.content == (STUDIO / path).read_bytes()
    assert_studio_headers(r)


def test_text_files_are_compressed_for_clients_that_ask(proxied):
    path = "vendor/highlight.min.js"
    raw = httpx.get(f"{proxied.url}/studio/{path}", headers={"Accept-Encoding": "gzip"}, timeout=5)
    assert raw.headers["content-encoding"] == "gzip" and raw.headers["vary"] == "Accept-Encoding"
    assert raw.content == (STUDIO / path).read_bytes()  # httpx decodes it
    plain = httpx.get(f"{proxied.url}/studio/{path}", headers={"Accept-Encoding": "identity"}, timeout=5)
    assert "content-encoding" not in plain.headers and plain.content == raw.content


def test_every_file_the_page_names_is_served_with_its_type(proxied):
    names = re.findall(r'(?:src|href)="/studio/([^"#?]+)"', (STUDIO / "index.html").read_text())
    assert any(name.endswith(".js") for name in names), names
    for name in names:
        r = httpx.get(f"{proxied.url}/studio/{name}", timeout=5)
        assert r.status_code == 200, (name, r.status_code)
        assert r.headers["content-type"] == TYPES[Path(name).suffix], name


ESCAPES = [
    "/studio/../app/settings.py",
    "/studio/..%2fapp/settings.py",
    "/studio/%2e%2e/app/settings.py",
    "/studio/%2e%2e%2fapp%2fsettings.py",
    "/studio/%252e%252e%252fapp/settings.py",
    "/studio/vendor/../../app/settings.py",
    "/studio/..%5capp%5csettings.py",
    "/studio/../tests/browser/vendor/axe.min.js",  # the browser tests' copy is never served
    "/studio/../../../../etc/passwd",
    "/studio/index.html%00.js",
    "/studio//etc/passwd",
    "/studio/%2fetc%2fpasswd",
    "/app/settings.py",
]


def test_no_path_leaves_the_studio_folder(proxied):
    with httpx.Client(timeout=10) as client:
        for path in ESCAPES:
            # Sent exactly as written, without client-side normalisation.
            request = client.build_request("GET", proxied.url)
            request.url = request.url.copy_with(raw_path=path.encode())
            r = client.send(request)
            assert r.status_code in (400, 404), (path, r.status_code)
            assert r.headers["content-type"].startswith("application/json"), path
            assert b"Settings" not in r.content and b"root:" not in r.content and b"axe" not in r.content


@pytest.mark.parametrize("path", ["/studio/x", "/studio/vendor/", "/studio/vendor", "/studio", "/studio/js/"])
def test_what_the_studio_lacks_is_a_json_404(proxied, path):
    assert_json_error(httpx.get(f"{proxied.url}{path}", timeout=5), 404, "not_found")


def test_writing_to_the_studio_is_a_json_405(proxied):
    assert_json_error(httpx.post(f"{proxied.url}/", content=b"{}", timeout=5), 405, "method_not_allowed")
    r = httpx.put(f"{proxied.url}/studio/vendor/marked.umd.js", content=b"x", timeout=5)
    assert_json_error(r, 405, "method_not_allowed")


def test_the_rest_is_as_before(proxied):
    assert_json_error(httpx.get(f"{proxied.url}/metrics", timeout=5), 404, "not_found")
    assert_json_error(httpx.get(f"{proxied.url}/index.html", timeout=5), 404, "not_found")
    r = httpx.get(f"{proxied.url}/v1/models", timeout=5)
    assert r.status_code == 200 and "content-security-policy" not in r.headers
