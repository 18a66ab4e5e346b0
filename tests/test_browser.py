"""The slider page in headless Debian Chromium driven by Playwright: load, move a slider, see streamed text."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from .test_serve import make_server  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).with_name("artifacts")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)")


def test_page_moves_a_slider_and_streams_text(anchor_dir):
    with make_server(anchor_dir) as s, sync_api.sync_playwright() as pw:
        engine = s.app.state.engine
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(s.url + "/")
            slider = page.locator("#lvl-sentiment")
            slider.wait_for()
            assert page.locator(".attr").count() == 2
            assert "negative" in page.locator(".attr").first.inner_text() and "positive" in page.locator(".attr").first.inner_text()
            page.fill("#max", "24")
            before = engine.stats.tokens
            slider.fill("0.9")  # sets the value and fires input + change: the page regenerates with the new mix
            assert page.locator("#val-sentiment").inner_text() == "0.90"
            page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=30000)
            assert page.locator("#out").inner_text().strip()
            assert engine.stats.tokens > before
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "slider_page.png"), full_page=True)
        finally:
            browser.close()
