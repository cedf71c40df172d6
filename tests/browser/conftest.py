"""The studio (issue 22) in a real browser: Debian's headless chromium, driven by selenium, against the
real stack (the scripted LLM, gunicorn with gevent workers, nginx serving the page and the API). The
whole suite shares one stack and one browser; a test that needs other settings starts a gateway of its
own. Screenshots of the page's states go to GATEWAY_TEST_ARTIFACTS (default var/test-artifacts/studio)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.browser.studio_page import Chromium, Studio
from tests.integration.conftest import Proxied, gateway_behind_nginx
from tests.procs import ROOT, free_port, scripted_llm_args, server

# Tokens per second of the scripted LLM when a topic does not say ([[pace:N]]): quick.
PACE = 1000

ARTIFACTS = Path(os.environ.get("GATEWAY_TEST_ARTIFACTS") or ROOT / "var" / "test-artifacts" / "studio")
_SAVED = pytest.StashKey[list[Path]]()


@pytest.fixture(scope="session")
def llm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("studio-llm") / "scripted_llm.log"
    with server(scripted_llm_args(port, PACE), health_url=f"{url}/healthz", log=log, startup_timeout=30):
        yield url


@pytest.fixture(scope="session")
def stack(llm_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxied]:
    """The gateway behind nginx that most tests share. No retries of a failed upstream call: an upstream
    failure shows at once."""
    folder = tmp_path_factory.mktemp("studio-stack")
    with gateway_behind_nginx(llm_url, folder, {"GATEWAY_LLM_MAX_RETRIES": "0"}) as proxied:
        yield proxied


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    browser = Chromium()
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="session")
def artifacts(pytestconfig: pytest.Config) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pytestconfig.stash[_SAVED] = []
    return ARTIFACTS


@pytest.fixture
def browser(chromium: Chromium) -> Chromium:
    """The shared browser on a blank page, without another test's emulation or log entries."""
    chromium.reset()
    return chromium


@pytest.fixture
def studio(
    browser: Chromium, stack: Proxied, artifacts: Path, pytestconfig: pytest.Config
) -> Iterator[Studio]:
    """The page on the shared stack, not yet loaded."""
    page = Studio(browser, stack.url, artifacts)
    yield page
    pytestconfig.stash[_SAVED].extend(page.saved)


@pytest.fixture
def open_studio(
    browser: Chromium, artifacts: Path, pytestconfig: pytest.Config
) -> Iterator[Callable[[str], Studio]]:
    """`open_studio(url)`: the page of another gateway's nginx, loaded."""
    pages: list[Studio] = []

    def open_at(url: str) -> Studio:
        page = Studio(browser, url, artifacts)
        pages.append(page)
        page.open()
        return page

    yield open_at
    for page in pages:
        pytestconfig.stash[_SAVED].extend(page.saved)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    saved = config.stash.get(_SAVED, [])
    if saved:
        terminalreporter.write_line(f"studio screenshots ({len(saved)}): {ARTIFACTS}")
