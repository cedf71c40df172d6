"""Debian's headless chromium under selenium, and the studio page as a test sees it: the DOM contract of
issue 22 (the page's ids and `data-*` states), the console, every request the page made, downloads and
screenshots."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from tests.procs import _die_with_parent

# Debian's packages (scripts/install_os_deps.sh). Both are named, so selenium-manager never looks for
# (or downloads) a browser or a driver of its own.
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1280, 900)
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}

# Offline and quiet: none of the browser's own services (updates, sync, translation) call out, so the
# only requests are the page's.
_ARGS = (
    "--headless=new",
    "--no-sandbox",  # root in a container
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--password-store=basic",
    "--lang=en-US",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
)

RUNNING = ("submitting", "planning", "writing")
ENDED = ("completed", "failed", "stopped", "lost")

# One read of everything the tests watch, so that the figures of a sample belong together.
_SNAPSHOT = """
const $ = (id) => document.getElementById(id);
const text = (id) => ($(id) ? $(id).textContent.trim() : null);
const error = $('error');
return {
  state: $('studio').dataset.state,
  status: text('status'),
  progress: text('progress-section'),
  elapsed: text('elapsed'),
  tokens: text('tokens'),
  chars: $('tutorial').textContent.length,
  outline: [...document.querySelectorAll('#outline-list > li')].map((li) => li.dataset.state),
  outline_raw: text('outline-raw'),
  error: error && !error.hidden ? {code: error.dataset.code || null, text: error.textContent.trim()} : null,
  download: $('download').hidden ? null : $('download').getAttribute('href'),
};
"""


class Chromium:
    """One headless chromium with a fresh profile in a temporary folder, its console and network logged.
    `close` quits it, kills whatever of it survived (by pid) and removes the folder."""

    def __init__(self) -> None:
        for path in (CHROMIUM, CHROMEDRIVER):
            if not os.access(path, os.X_OK):
                raise RuntimeError(f"{path} is missing: run scripts/install_os_deps.sh (as root)")
        self.profile = Path(tempfile.mkdtemp(prefix="studio-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in (*_ARGS, f"--user-data-dir={self.profile}"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        # An alert stays open (instead of being dismissed by the next command) so a test can see it.
        options.set_capability("unhandledPromptBehavior", "ignore")
        service = Service(
            str(CHROMEDRIVER),
            log_output=str(self.profile / "chromedriver.log"),
            popen_kw={"preexec_fn": _die_with_parent},
        )
        self.console: list[dict[str, Any]] = []
        self.network: list[dict[str, Any]] = []
        try:
            self.driver = webdriver.Chrome(service=service, options=options)
        except BaseException:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self._chromedriver = psutil.Process(service.process.pid)

    def close(self) -> None:
        """Quit; then kill what is left of chromedriver and the browsers it started, by pid (psutil
        checks each is still that process, not a new one with a reused pid)."""
        started = [self._chromedriver]
        with contextlib.suppress(psutil.Error):
            started += self._chromedriver.children(recursive=True)
        try:
            with contextlib.suppress(Exception):
                self.driver.quit()
        finally:
            for process in started:
                with contextlib.suppress(psutil.Error):
                    if process.is_running():
                        process.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    def cdp(self, method: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.driver.execute_cdp_cmd(method, params)
        return result

    def reset(self) -> None:
        """A blank page with no emulation left over from another test and empty logs."""
        self.driver.get("about:blank")
        self.cdp("Emulation.clearDeviceMetricsOverride")
        self.cdp("Emulation.setEmulatedMedia", media="", features=[])
        self.drain()
        self.console.clear()
        self.network.clear()

    def drain(self) -> None:
        """Move what the browser logged since the last call into `console` and `network`."""
        self.console.extend(self.driver.get_log("browser"))
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                self.network.append(message["params"]["request"])

    def requests_outside(self, origin: str) -> list[str]:
        """URLs the page asked for (or tried to: a request the CSP blocked is still listed) anywhere but
        `origin`; `data:` URLs are no requests."""
        self.drain()
        urls = [request["url"] for request in self.network]
        return [url for url in urls if not url.startswith("data:") and _origin(url) != origin]

    def complaints(self) -> list[dict[str, Any]]:
        """Console messages at warning level or above (CSP violations are errors)."""
        self.drain()
        return [m for m in self.console if str(m.get("level", "")).upper() in ("WARNING", "SEVERE", "ERROR")]

    def alert_text(self) -> str | None:
        try:
            return self.driver.switch_to.alert.text
        except NoAlertPresentException:
            return None

    def dark(self, on: bool = True) -> None:
        features = [{"name": "prefers-color-scheme", "value": "dark" if on else "light"}]
        self.cdp("Emulation.setEmulatedMedia", media="", features=features)

    def phone(self) -> None:
        self.cdp("Emulation.setDeviceMetricsOverride", **PHONE)

    def downloads_into(self, folder: Path) -> None:
        self.cdp("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(folder))

    @contextlib.contextmanager
    def on_new_document(self, source: str) -> Iterator[None]:
        """`source` runs in every page loaded inside the block, before the page's own scripts."""
        added = self.cdp("Page.addScriptToEvaluateOnNewDocument", source=source)
        try:
            yield
        finally:
            self.cdp("Page.removeScriptToEvaluateOnNewDocument", identifier=added["identifier"])


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class Studio:
    """The studio page at `url` (nginx's address) in `browser`; screenshots go to `artifacts`."""

    browser: Chromium
    url: str
    artifacts: Path
    saved: list[Path] = field(default_factory=list)

    @property
    def driver(self) -> webdriver.Chrome:
        return self.browser.driver

    def open(self) -> None:
        """Load the page and wait until it is ready to order: the models listed, or the key asked for."""
        self.driver.get(f"{self.url}/")
        self.until(
            lambda: self.driver.execute_script(
                "const m = document.getElementById('model'), k = document.getElementById('api-key-field');"
                "return document.getElementById('studio')?.dataset.state === 'idle' &&"
                " (m?.dataset.loaded === 'true' || (k && !k.hidden));"
            ),
            "the page to be ready (idle, with its models or its key field)",
            timeout=15,
        )

    def el(self, element_id: str) -> WebElement:
        return self.driver.find_element(By.ID, element_id)

    def type_into(self, element_id: str, text: str) -> None:
        field_ = self.el(element_id)
        field_.clear()
        field_.send_keys(text)

    def order(self, topic: str, key: str | None = None) -> None:
        self.type_into("topic", topic)
        if key is not None:
            self.type_into("api-key", key)
        self.el("order").click()

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = self.driver.execute_script(_SNAPSHOT)
        return snap

    def state(self) -> str:
        return str(self.snapshot()["state"])

    def until(self, check: Callable[[], Any], what: str, timeout: float = 30, poll: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(poll)
        raise AssertionError(f"waited {timeout} s for {what}; the page: {self.snapshot()}")

    def wait_state(self, *states: str, timeout: float = 30) -> dict[str, Any]:
        """The first snapshot in one of `states`; fails at once if the page ends in another state."""

        def reached() -> dict[str, Any] | None:
            snap = self.snapshot()
            if snap["state"] in states:
                return snap
            assert snap["state"] not in ENDED, f"expected {states}, the page ended: {snap}"
            return None

        result: dict[str, Any] = self.until(reached, f"state {states}", timeout)
        return result

    def tab_order(self, last: str, presses: int = 30) -> list[str]:
        """The ids that Tab focuses one after another from the top of the page, up to `last`."""
        reached: list[str] = []
        keys = ActionChains(self.driver)
        for _ in range(presses):
            keys.send_keys(Keys.TAB).perform()
            reached.append(self.driver.execute_script("return document.activeElement.id"))
            if reached[-1] == last:
                break
        return reached

    def wait_error(self, timeout: float = 15) -> dict[str, Any]:
        """The first snapshot that shows an error."""

        def shown() -> dict[str, Any] | None:
            snap = self.snapshot()
            return snap if snap["error"] else None

        result: dict[str, Any] = self.until(shown, "an error message", timeout)
        return result

    def download(self, folder: Path, timeout: float = 15) -> tuple[str, bytes]:
        """Click `#download` with downloads going into `folder`: the file's name and bytes."""
        link = self.el("download")
        assert link.is_displayed(), "the download link is not shown"
        name = link.get_attribute("download") or ""
        assert name, "the download link has no file name (download attribute)"
        self.browser.downloads_into(folder)
        link.click()
        target = folder / name

        def arrived() -> bool:
            partial = [p for p in folder.iterdir() if p.suffix == ".crdownload"]
            return target.exists() and not partial

        self.until(arrived, f"{name} to be downloaded into {folder}", timeout, poll=0.1)
        return name, target.read_bytes()

    def screenshot(self, name: str) -> Path:
        """The viewport as `<artifacts>/<name>.png`."""
        png = self.driver.get_screenshot_as_png()
        assert png.startswith(b"\x89PNG"), f"screenshot {name} is not a PNG"
        path = self.artifacts / f"{name}.png"
        path.write_bytes(png)
        self.saved.append(path)
        return path
