"""The studio for keyboard, screen reader and phone users: axe-core (vendored, test-only) finds no serious
violation in the idle, completed and error states, light and dark; Tab walks the order form in order;
every control has a label; a phone-sized screen never scrolls sideways."""

from __future__ import annotations

from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.browser.studio_page import Studio
from tests.procs import ROOT

pytestmark = pytest.mark.integration

AXE = ROOT / "tests" / "browser" / "vendor" / "axe.min.js"
SERIOUS = ("serious", "critical")

_RUN_AXE = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ['violations']})
  .then((result) => done(result.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map((n) => `${n.target.join(' ')}: ${n.failureSummary}`),
  }))))
  .catch((error) => done([{id: 'axe-error', impact: 'critical', help: String(error), nodes: []}]));
"""


def axe_violations(studio: Studio) -> list[dict[str, Any]]:
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run scripts/vendor_studio.sh", pytrace=False)
    driver = studio.driver
    if not driver.execute_script("return typeof window.axe === 'object'"):
        driver.execute_script(AXE.read_text())
    driver.set_script_timeout(60)
    violations: list[dict[str, Any]] = driver.execute_async_script(_RUN_AXE)
    return violations


def check_both_schemes(studio: Studio, state: str, found: dict[str, list[dict[str, Any]]]) -> None:
    """axe in light then dark mode; the violations by `<state> <scheme>` into `found`."""
    for scheme in ("light", "dark"):
        studio.browser.dark(scheme == "dark")
        found[f"{state} {scheme}"] = axe_violations(studio)
        if scheme == "dark" and state != "error":
            studio.screenshot(f"dark-{state}")
    studio.browser.dark(False)


def test_axe_finds_no_serious_violation_in_any_state_light_or_dark(studio: Studio):
    found: dict[str, list[dict[str, Any]]] = {}
    studio.open()
    check_both_schemes(studio, "idle", found)
    studio.order("Accessible Git [[sections:2]][[pace:0]]")
    studio.wait_state("completed", timeout=30)
    check_both_schemes(studio, "completed", found)
    studio.order("Accessible failure [[fault:http500]]")
    studio.wait_error()
    check_both_schemes(studio, "error", found)
    report = "\n".join(
        f"{where}: [{v['impact']}] {v['id']} ({v['help']}), {len(v['nodes'])} nodes:\n    "
        + "\n    ".join(v["nodes"][:5])
        for where, violations in found.items()
        for v in violations
    )
    serious = [where for where, vs in found.items() for v in vs if v["impact"] in SERIOUS]
    assert not serious, f"serious violations in {sorted(set(serious))}; all violations:\n{report}"


FORM = ["topic", "model", "language", "order"]


def test_the_keyboard_walks_the_form_in_order_and_every_control_is_labelled(studio: Studio):
    studio.open()
    reached = studio.tab_order("order")
    assert [r for r in reached if r in FORM] == FORM, f"Tab reached {reached}"

    controls = studio.driver.find_elements(By.CSS_SELECTOR, "input, select, textarea, button")
    shown = [c for c in controls if c.is_displayed()]
    unnamed = [c.get_attribute("outerHTML")[:120] for c in shown if not c.accessible_name.strip()]
    assert unnamed == [], f"controls without an accessible name: {unnamed}"


OVERFLOW = "return [document.documentElement.scrollWidth, window.innerWidth]"


def test_a_phone_screen_never_scrolls_sideways(studio: Studio):
    studio.browser.phone()
    studio.open()
    width, viewport = studio.driver.execute_script(OVERFLOW)
    assert viewport == 390 and width <= viewport, f"idle: {width} px wide in a {viewport} px screen"
    studio.screenshot("phone")
    studio.order("Phone-sized Docker [[sections:2]][[pace:0]]")
    studio.wait_state("completed", timeout=30)
    width, viewport = studio.driver.execute_script(OVERFLOW)
    assert width <= viewport, f"completed: {width} px wide in a {viewport} px screen"
    studio.driver.execute_script("document.querySelector('#tutorial pre').scrollIntoView({block: 'center'})")
    studio.screenshot("phone-completed")  # a code block, the widest thing in a tutorial
