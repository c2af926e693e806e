"""The Compare tab in a real browser: Debian's Chromium driven by Playwright (no downloaded browsers).

Loads the page, picks a class, clicks Generate and waits for all six panels. Screenshots go to
``tmp_path``; with ``PDMD_SAVE_SCREENSHOT=1`` also to ``assets/screenshot_compare.png``.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (apt-get install chromium)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url():
    from app.app import build_app

    demo = build_app()
    demo.queue(default_concurrency_limit=4).launch(prevent_thread_lock=True, server_name="127.0.0.1",
                                                   server_port=free_port(), quiet=True)
    try:
        yield demo.local_url
    finally:
        demo.close()


def test_compare_in_browser(url, tmp_path):
    from playwright.sync_api import sync_playwright

    save = os.environ.get("PDMD_SAVE_SCREENSHOT") == "1"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                                    "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("button", name="Generate").wait_for(timeout=30_000)
            page.locator("#class-dd input").click()
            page.get_by_role("option", name="3", exact=True).click()
            count = page.locator("#count-num input")
            count.fill("16" if save else "4")
            page.get_by_role("button", name="Generate").click()
            for i in range(6):
                page.locator(f"#panel-{i} img").first.wait_for(state="visible", timeout=120_000)
            page.locator("#caption-5").filter(has_text="DP-DMD").wait_for(timeout=30_000)
            assert "class 3" in page.locator("#summary").inner_text()
            assert "NFE" in page.locator("#caption-0").inner_text()
            shot = tmp_path / "compare.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if save:
                shutil.copy(shot, ROOT / "assets" / "screenshot_compare.png")
        finally:
            browser.close()
