"""Ordering a tutorial in the studio: it renders while it streams, ends with a download equal to the
file on disk; Stop and a lost connection cancel the generation upstream; 100 KB stays responsive."""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from scripted_llm.answerers.tutorial import outline_text, section_text
from scripted_llm.script import parse_directives
from tests.browser.studio_page import Studio
from tests.integration.conftest import Proxied, nginx_in_front

pytestmark = pytest.mark.integration

SECTIONS = 4


def outline(topic: str) -> list[dict[str, list[str]]]:
    """The scripted LLM's outline for `topic`: one {title: subsections} per section."""
    clean, directives = parse_directives(topic)
    directory: list[dict[str, list[str]]] = json.loads(outline_text(clean, directives))["directory"]
    return directory


def section_titles(topic: str) -> list[str]:
    return [next(iter(entry)) for entry in outline(topic)]


def seconds(text: str) -> int:
    found = re.search(r"\d+", text or "")
    return int(found.group()) if found else -1


def number(text: str) -> int:
    digits = re.sub(r"\D", "", text or "")
    return int(digits) if digits else -1


def upstream_outcomes(proxied: Proxied, topic: str) -> list[str]:
    clean = parse_directives(topic)[0]
    return [entry["outcome"] for entry in proxied.app.journal() if entry["topic"] == clean]


def wait_closed_upstream(proxied: Proxied, topic: str, timeout: float) -> float:
    """Seconds until no upstream request of `topic` is running and one ended `client_closed`."""
    started = time.monotonic()
    outcomes: list[str] = []
    while time.monotonic() - started < timeout:
        outcomes = upstream_outcomes(proxied, topic)
        if "running" not in outcomes and "client_closed" in outcomes:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"the upstream request was not closed within {timeout} s: {outcomes}")


def test_a_tutorial_renders_while_it_streams_and_downloads_as_written(studio: Studio, stack: Proxied):
    topic = "Progressive MySQL [[pace:80]][[sections:4]]"
    titles = section_titles(topic)
    studio.open()
    studio.screenshot("idle")
    studio.order(topic)
    studio.wait_state("planning", timeout=10)
    studio.screenshot("planning")

    # Sampled while it writes: the text, the figures and the outline.
    first = studio.wait_state("writing", timeout=15)
    samples = [first]
    while (snap := studio.snapshot())["state"] == "writing":
        samples.append(snap)
        if len(samples) == 4:
            studio.screenshot("writing")
        time.sleep(0.4)
    assert snap["state"] == "completed", snap
    assert len(samples) >= 5, f"too few samples while writing: {samples}"

    chars = [s["chars"] for s in samples]
    assert chars == sorted(chars) and len(set(chars)) >= 4, f"the text did not grow step by step: {chars}"
    tokens = [number(s["tokens"]) for s in samples]
    assert tokens == sorted(tokens) and tokens[-1] > tokens[0] > 0, tokens
    elapsed = [seconds(s["elapsed"]) for s in samples]
    assert elapsed == sorted(elapsed) and elapsed[-1] >= elapsed[0] + 2, elapsed
    # Writing starts with the title (the counter at 0); the counter and the status follow each section's
    # heading, never going back.
    progress = [s["progress"] for s in samples]
    assert all(re.fullmatch(rf"[0-{SECTIONS}] / {SECTIONS}", p) for p in progress), progress
    assert progress == sorted(progress), progress
    started = [s for s in samples if not s["progress"].startswith("0 ")]
    assert len(set(progress)) >= 3, f"the section counter did not move: {progress}"
    for s in started:
        assert len(s["outline"]) == SECTIONS and s["outline"].count("active") == 1, s
        n = int(s["progress"].split("/")[0])
        assert s["outline"][n - 1] == "active", s
        assert titles[n - 1] in s["status"] and "section" in s["status"].lower(), s

    # The outline as a list: one item per section, each with its subsections.
    items = studio.driver.find_elements(By.CSS_SELECTOR, "#outline-list > li")
    assert [title in item.text for item, title in zip(items, titles, strict=True)] == [True] * SECTIONS
    assert all(item.find_elements(By.CSS_SELECTOR, "ul > li") for item in items)
    assert snap["outline"] == ["done"] * SECTIONS, snap

    # Rendered Markdown: headings, and code blocks highlighted.
    article = studio.el("tutorial")
    assert len(article.find_elements(By.CSS_SELECTOR, "h1")) == 1
    assert len(article.find_elements(By.CSS_SELECTOR, "h2")) == SECTIONS
    highlighted = article.find_elements(By.CSS_SELECTOR, "pre code [class^='hljs-']")
    assert highlighted, "no highlighted code in the tutorial"
    studio.screenshot("completed")

    with tempfile.TemporaryDirectory(prefix="studio-downloads-") as folder:
        name, data = studio.download(Path(folder))
    assert data == (stack.app.tutorials / name).read_bytes()
    assert snap["status"].startswith("Done"), snap

    # Copy Markdown puts the file's text on the clipboard (read back through the clipboard API).
    studio.browser.cdp(
        "Browser.grantPermissions",
        origin=stack.url,
        permissions=["clipboardReadWrite", "clipboardSanitizedWrite"],
    )
    studio.el("copy").click()
    studio.until(lambda: studio.el("copy-status").text.strip(), "the copy to be confirmed", timeout=5)
    copied = studio.driver.execute_async_script(
        "const done = arguments[0]; navigator.clipboard.readText().then(done, (e) => done(String(e)));"
    )
    assert copied.encode() == data, copied[:200]

    newest = studio.driver.find_element(By.CSS_SELECTOR, "#history > li:first-child a")
    assert newest.get_attribute("href").split("?")[0].endswith(f"/download/{name}")
    assert newest.text.strip(), "the history entry has no title"


def test_stop_cancels_the_generation_upstream(studio: Studio, stack: Proxied):
    topic = "Stopped PostgreSQL [[pace:40]][[sections:4]]"
    files_before = set(stack.app.tutorials.iterdir()) if stack.app.tutorials.exists() else set()
    studio.open()
    studio.order(topic)
    studio.wait_state("writing", timeout=15)
    time.sleep(1)
    assert studio.el("stop").is_enabled() and not studio.el("order").is_enabled()
    studio.el("stop").click()
    clicked = time.monotonic()
    snap = studio.wait_state("stopped", timeout=5)
    assert snap["status"].lower().startswith("stopped"), snap
    closed = wait_closed_upstream(stack, topic, timeout=5)
    print(f"stopped: the page in {time.monotonic() - clicked:.1f} s, the upstream closed in {closed:.1f} s")
    studio.screenshot("stopped")
    assert not studio.el("stop").is_enabled() and studio.el("order").is_enabled()
    assert snap["download"] is None
    time.sleep(1)  # a file would be written at the end: none comes
    assert set(stack.app.tutorials.iterdir()) == files_before


def test_a_lost_connection_says_the_generation_was_cancelled(browser, stack: Proxied, open_studio, tmp_path):
    """nginx in front of the shared gateway, stopped mid-stream: the browser loses the stream, and the
    gateway, whose client nginx was, cancels the generation."""
    topic = "Lost Redis [[pace:40]][[sections:4]]"
    with nginx_in_front(stack.app, tmp_path / "edge", streams=100, rate=1000, burst=1000) as edge:
        studio = open_studio(edge.url)
        studio.order(topic)
        studio.wait_state("writing", timeout=15)
        time.sleep(1)
    # nginx has stopped (SIGTERM, its fast shutdown): every connection it had is closed.
    snap = studio.wait_state("lost", timeout=10)
    assert snap["error"] is not None and snap["error"]["code"] == "connection_lost", snap
    assert "cancel" in snap["error"]["text"].lower(), snap
    assert not re.search(r"still running|may continue|might continue", snap["error"]["text"], re.I), snap
    studio.screenshot("lost")
    wait_closed_upstream(stack, topic, timeout=5)


# Installed before the page's own scripts: every main-thread task over 50 ms (the longtask API's floor).
LONG_TASKS = """
window.__longTasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__longTasks.push(entry.duration);
}).observe({type: 'longtask', buffered: true});
"""
LONGEST_TASK_MS = 500
BIG_CHARS = 100_000


def test_a_100_kb_tutorial_streams_without_freezing_the_page(studio: Studio, stack: Proxied):
    """A functional guard, not a benchmark: rendering 100 KB as it streams (about 10 s at 2000 tokens/s)
    never blocks the page's main thread for long, and all of it arrives. The bound is generous; the
    figures are printed."""
    topic = "Large Kafka [[pace:2000]][[sections:8]][[section_chars:14000]]"
    with studio.browser.on_new_document(LONG_TASKS):
        studio.open()
        studio.order(topic)
        snap = studio.wait_state("completed", timeout=90)
        tasks = studio.driver.execute_script("return window.__longTasks")
    longest, total = max(tasks, default=0), sum(tasks)
    print(f"100 KB: {len(tasks)} long tasks, longest {longest:.0f} ms, total {total:.0f} ms")
    assert snap["chars"] >= BIG_CHARS, snap["chars"]
    assert longest < LONGEST_TASK_MS, f"{len(tasks)} long tasks, longest {longest:.0f} ms: {tasks}"
    clean, directives = parse_directives(topic)
    last = section_text(clean, outline(topic)[-1], int(directives["section_chars"])).split("\n\n")[-1]
    text = studio.el("tutorial").text
    assert last in text[-2000:], text[-2000:]  # the last paragraph rendered whole
