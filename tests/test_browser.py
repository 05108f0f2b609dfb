"""The app in a real headless browser (Debian's chromium + the playwright package; no
`playwright install`). Screenshots go to tests/artifacts/ (gitignored).

Runs a prompt, waits for the coloured tokens, the skip-layer heatmap and the speed chart, switches
the drafter to CLaSp (DP grid), steps one cycle at a time, and checks an error toast.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from specviz.ui.controls import drafter_choice

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PROMPT = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return"

pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} is absent (install it with: apt-get install -y chromium)"),
]


@pytest.fixture(scope="module")
def url(tiny_model_dir):
    from specviz.ui import CSS, build_app

    threads = torch.get_num_threads()  # build_app(torch_threads=1) changes it process-wide
    demo = build_app(model_names=[tiny_model_dir], examples=[PROMPT], preload=True, torch_threads=1, default_max_new_tokens=40)
    _, local_url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, css=CSS)
    try:
        yield local_url
    finally:
        demo.close()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def page(url):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        pg = browser.new_page(viewport={"width": 1440, "height": 1000})
        pg.set_default_timeout(90_000)
        pg.goto(url, wait_until="domcontentloaded")
        pg.wait_for_selector("#sv-run")
        yield pg
        browser.close()


def wait_finished(page, drafter: str):
    """The cards' status line names the drafter and how the run ended."""
    page.wait_for_function(
        """(d) => { const el = document.querySelector('#sv-cards .sv-status');
                    return el && el.textContent.startsWith(d) &&
                           /reached max new tokens|stopped at EOS/.test(el.textContent) &&
                           !!document.querySelector('#sv-cards .sv-badge') &&
                           !document.querySelector('#sv-cards .sv-badge').textContent.includes('…'); }""",
        arg=drafter)


def choose_drafter(page, name: str):
    """Pick a drafter by its name; the list shows "name · title"."""
    label = drafter_choice(name)[0]
    page.locator("#sv-drafter input").click()
    page.get_by_role("option", name=label, exact=True).click()
    page.wait_for_function("(n) => document.querySelector('#sv-drafter input').value === n", arg=label)


def test_run_switch_drafter_step(page):
    page.locator("#sv-prompt textarea").fill(PROMPT)
    page.locator("#sv-run").click()
    page.wait_for_selector("#sv-tokens .sv-tgt")
    page.wait_for_selector("#sv-tokens .sv-acc")
    wait_finished(page, "static-skip")
    page.wait_for_selector("#sv-heatmap .js-plotly-plot")
    text = page.locator("#sv-tokens .sv-out").inner_text()
    assert text.startswith("def add(a, b):")
    assert "lossless" in page.locator("#sv-cards").inner_text()
    page.screenshot(path=str(ARTIFACTS / "01-static-skip.png"), full_page=True)

    title = page.locator("#sv-tokens .sv-acc").first.get_attribute("title")
    assert "draft position" in title and "p (target)" in title and "q (draft)" in title

    page.get_by_role("tab", name="Speed").click()
    page.wait_for_selector("#sv-speed .js-plotly-plot")
    page.wait_for_selector("#sv-speedup .js-plotly-plot")
    page.locator("#sv-speed").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "02-speed-tab.png"), full_page=True)

    choose_drafter(page, "clasp")
    page.get_by_role("tab", name="Skip layers").click()
    page.locator("#sv-run").click()
    wait_finished(page, "clasp")
    page.wait_for_selector("#sv-dp .js-plotly-plot")
    assert page.locator("#sv-dp .js-plotly-plot .heatmaplayer").count() >= 1 or \
        page.locator("#sv-dp .js-plotly-plot").count() == 1
    page.screenshot(path=str(ARTIFACTS / "03-clasp-skip-layers.png"), full_page=True)

    page.get_by_role("tab", name="Acceptance").click()
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "04-acceptance-tab.png"), full_page=True)
    page.get_by_role("tab", name="Learn").click()
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "05-learn-tab.png"), full_page=True)

    # Step: one speculation cycle per click
    for i in range(3):
        page.locator("#sv-step").click()
        page.wait_for_function(
            "(n) => { const el = document.querySelector('#sv-cards .sv-status');"
            " return el && el.textContent.includes('step mode') && el.textContent.includes(' ' + n + ' done'); }",
            arg=i)
    page.screenshot(path=str(ARTIFACTS / "06-step-mode.png"), full_page=True)


def test_error_toast(page):
    page.locator("#sv-prompt textarea").fill("   ")
    page.locator("#sv-run").click()
    page.evaluate("window.scrollTo(0, 0)")
    toast = page.locator(".toast-body", has_text="Prompt must not be empty")
    toast.first.wait_for(state="visible")
    page.wait_for_timeout(800)  # the toast flies in
    page.screenshot(path=str(ARTIFACTS / "07-error-toast.png"))


def test_a_typed_value_outside_a_slider_is_announced_not_clamped_silently(page):
    """Gradio's page clamps a slider's typed value when its box loses focus; the app says so."""
    box = page.locator("input[aria-label='number input for max new tokens']")
    box.fill("0")
    box.press("Tab")  # blur: the value is clamped to the minimum
    notice = page.locator("#sv-clamp-notice")
    notice.wait_for(state="visible")
    assert notice.inner_text() == "max new tokens: 0 is below the minimum 1, so it was set to 1."
    assert box.input_value() == "1"
    page.screenshot(path=str(ARTIFACTS / "08-clamp-notice.png"))
    box.fill("40")
    box.press("Tab")  # in range: nothing new to say
    assert box.input_value() == "40"
