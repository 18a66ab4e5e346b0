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
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"
)


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
            assert (
                "negative" in page.locator(".attr").first.inner_text()
                and "positive" in page.locator(".attr").first.inner_text()
            )
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


def test_moving_a_slider_mid_stream_bends_the_running_text(anchor_dir):
    """A long stream; the slider moves while it runs: the request's recorded mix changes at a token
    index after the first, with no restart (one request, one growing text)."""
    import time

    with make_server(anchor_dir) as s, sync_api.sync_playwright() as pw:
        engine = s.app.state.engine
        engine.eos = set()  # the stream runs its full length
        step = engine.model
        engine.model = lambda plan, cache: (time.sleep(0.03), step(plan, cache))[
            1
        ]  # a tiny model is too quick to catch
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(s.url + "/")
            page.locator("#lvl-sentiment").wait_for()
            page.uncheck("#auto")
            page.fill("#max", "120")
            joins = sum(1 for _, kind, _ in engine.stats.events if kind == "join")
            page.click("#go")
            page.wait_for_function("document.getElementById('out').textContent.length > 20", timeout=30000)
            page.locator("#lvl-sentiment").fill("1")  # input + change events while streaming
            time.sleep(0.2)
            page.locator("#lvl-sentiment").fill("0")
            page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=60000)
            log = page.evaluate("JSON.parse(document.getElementById('mixlog').dataset.log)")
            assert len(log) >= 2 and log[0]["token"] == 0 and all(e["token"] > 0 for e in log[1:])
            assert log[1]["coefficients"] != log[0]["coefficients"]
            assert sum(1 for _, kind, _ in engine.stats.events if kind == "join") == joins + 1  # no restart
            assert "mix changes" in page.locator("#mixlog").inner_text()
            levels = page.evaluate("""[...document.querySelectorAll('#chart polyline[data-attr=sentiment]')]
                .map(p => p.getAttribute('points').split(' ').map(xy => Number(xy.split(',')[1])))[0]""")
            assert len(levels) > 10 and len(set(levels)) >= 2  # the chart shows the level moving during the text
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "live_slider.png"), full_page=True)
        finally:
            browser.close()
