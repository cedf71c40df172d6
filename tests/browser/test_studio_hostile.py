"""A hostile tutorial runs nothing: the scripted LLM writes `<script>`, event handlers, `javascript:`
links, raw HTML and images from a canary server (`[[hostile:1]]`); none of it runs, loads or reaches
the canary, and the rendered Markdown keeps none of the dangerous elements."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest

from tests.browser.studio_page import Studio
from tests.integration.conftest import Proxied

pytestmark = pytest.mark.integration

# Elements that must not come from a tutorial: they run, load, navigate or restyle the page.
FORBIDDEN = "script, iframe, frame, object, embed, form, style, meta, link, base"
# Where the tutorial's text shows: its title and headings are in the outline, the status, the history.
SHOWN_IN = "#tutorial, #outline, #status, #history, #error"

_DANGERS = f"""
const all = [...document.querySelectorAll('*')];
const squash = (v) => v.replace(/[\\u0000-\\u0020]/g, '').toLowerCase();
return {{
  forbidden: [...document.querySelectorAll('{SHOWN_IN}')]
    .flatMap((part) => [...part.querySelectorAll('{FORBIDDEN}')].map((e) => e.outerHTML.slice(0, 120))),
  handlers: all.flatMap((e) => [...e.attributes].filter((a) => a.name.toLowerCase().startsWith('on'))
    .map((a) => `${{e.tagName}} ${{a.name}}`)),
  scripted_urls: all.flatMap((e) => [...e.attributes]
    .filter((a) => /^(href|src|action|formaction|xlink:href|data|srcdoc)$/i.test(a.name))
    .filter((a) => /^(javascript|vbscript|data:text\\/html)/.test(squash(a.value)) || a.name === 'srcdoc')
    .map((a) => `${{e.tagName}} ${{a.name}}=${{a.value}}`)),
  foreign_scripts: [...document.scripts].map((s) => s.src)
    .filter((src) => !src.startsWith(location.origin + '/studio/')),
}};
"""


SCROLL_TO_HOSTILE = """
const heading = [...document.querySelectorAll('#tutorial h3')]
  .find((h) => h.textContent.startsWith('Things a model should never have written'));
heading.scrollIntoView({block: 'start'});
"""


class _Canary(BaseHTTPRequestHandler):
    def _count(self) -> None:
        self.server.requests.append(f"{self.command} {self.path}")  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    do_GET = do_POST = do_HEAD = do_OPTIONS = _count

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def canary() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 that answers anything with 204: its URL and the requests it got."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Canary)
    httpd.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.requests  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_a_hostile_tutorial_runs_and_loads_nothing(studio: Studio, stack: Proxied):
    with canary() as (canary_url, hits):
        topic = f"Hostile HTML [[hostile:1]][[canary:{quote(canary_url, safe='')}]][[sections:2]][[pace:0]]"
        studio.open()
        title = studio.driver.title
        studio.order(topic)
        snap = studio.wait_state("completed", timeout=30)
        assert studio.browser.alert_text() is None
        dangers = studio.driver.execute_script(_DANGERS)
        studio.driver.execute_script(SCROLL_TO_HOSTILE)
        studio.screenshot("hostile")
        assert studio.browser.alert_text() is None
        console = studio.browser.complaints()
        elsewhere = studio.browser.requests_outside(stack.url)
        assert studio.driver.title == title
        # The hostile text did arrive: it is shown as text, not run.
        assert "Things a model should never have written" in studio.el("tutorial").text, snap
    assert dangers == {"forbidden": [], "handlers": [], "scripted_urls": [], "foreign_scripts": []}
    assert console == [], console
    assert elsewhere == [], elsewhere
    assert hits == [], hits
