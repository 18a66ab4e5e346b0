"""Screenshots of a live slider move on the page: the text streams under sentiment 0, the slider goes
to 1 mid-answer, and the rest is written under the new mix (no restart). Writes docs/live_slider_N.png.

python experiments/live_slider.py --anchors anchors/quickstart
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--anchors", required=True)
    ap.add_argument("--prompt", default="Describe the restaurant you went to last night.")
    ap.add_argument("--switch-after", type=int, default=40, help="characters of text before the slider moves")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "lerplm", "serve", "--anchors", args.anchors, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=FLAGS)
            page = browser.new_page(viewport={"width": 900, "height": 640})
            page.goto(url + "/")
            page.locator("#lvl-sentiment").wait_for()
            page.uncheck("#auto")
            page.fill("#prompt", args.prompt)
            page.fill("#max", "64")
            page.fill("#temp", "0.7")
            for a in page.evaluate("attributes.map(a => a.name)"):
                if a != "sentiment":
                    page.fill(f"#w-{a}", "0")
            page.locator("#lvl-sentiment").fill("0")
            page.click("#go")
            page.wait_for_function(
                f"document.getElementById('out').textContent.length > {args.switch_after}", timeout=60000
            )
            page.screenshot(path=str(ROOT / "docs" / "live_slider_1.png"))
            page.locator("#lvl-sentiment").fill("1")
            page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=120000)
            page.screenshot(path=str(ROOT / "docs" / "live_slider_2.png"))
            print(page.locator("#out").inner_text())
            print(page.locator("#mixlog").inner_text())
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
