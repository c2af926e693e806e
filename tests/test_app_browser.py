"""The app in a real browser: Debian's Chromium driven by Playwright (no downloaded browsers).

* Compare: pick a class, click Generate; the panels stream in, every distilled student's before the
  50-step teacher's (the order is recorded in the page by a MutationObserver, so a slow machine
  changes the timings, not the order), and the teacher's caption counts while it computes.
* Compare, discrete family: pick ``ring-mix-tokens``; the D-MMD step choice appears, and Generate
  shows the teacher at 100, 2 and 8 steps, D-MMD with and without its noise input and data, each
  with its NFE and exact TV to the true joint.
* Collapse lab: train two methods side by side for a few updates and see both scatters, the curves
  and the finished status.

With ``PDMD_SAVE_SCREENSHOT=1`` the screenshots of every tab also go to ``assets/screenshots/``
(palette PNGs, small) and ``assets/screenshot_compare.png``; the tab tour runs only then.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SAVE = os.environ.get("PDMD_SAVE_SCREENSHOT") == "1"
SHOTS = ROOT / "assets" / "screenshots"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (apt-get install chromium)")]

# Records, per Compare panel, the order in which its image first appears, and whether the teacher's
# caption said "computing" before its image came.
OBSERVE = """() => {
  window.__order = []; window.__computing = false;
  const seen = new Set();
  const check = () => {
    for (let i = 0; i < 6; i++) {
      if (!seen.has(i) && document.querySelector(`#panel-${i} img`)) { seen.add(i); window.__order.push(i); }
    }
    const cap = document.querySelector('#caption-0');
    if (cap && cap.innerText.includes('computing') && !seen.has(0)) window.__computing = true;
  };
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url():
    from app import live
    from app.app import CSS, build_app

    init = live.DISTILL_INIT_ITERS
    live.DISTILL_INIT_ITERS = 30  # a rough starting net is enough to watch the lab run
    demo = build_app()
    demo.queue(default_concurrency_limit=4).launch(prevent_thread_lock=True, server_name="127.0.0.1",
                                                   server_port=free_port(), quiet=True, css=CSS)
    try:
        yield demo.local_url
    finally:
        demo.close()
        live.DISTILL_INIT_ITERS = init


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def _open(browser, url, height=1500):
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("button", name="Generate").wait_for(timeout=60_000)
    return page


def _save(page, name: str, tmp_path: Path, full_page: bool = True) -> Path:
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), full_page=full_page)
    assert shot.stat().st_size > 10_000
    if SAVE:
        from PIL import Image

        SHOTS.mkdir(parents=True, exist_ok=True)
        img = Image.open(shot).convert("RGB")
        if img.height > 1600:  # long pages at a readable but smaller scale
            img = img.resize((round(img.width * 1600 / img.height), 1600), Image.Resampling.LANCZOS)
        img.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(SHOTS / f"{name}.png", optimize=True)
    return shot


def test_compare_streams_students_before_the_teacher(url, browser, tmp_path):
    page = _open(browser, url)
    try:
        page.locator("#class-dd input").click()
        page.get_by_role("option", name="3", exact=True).click()
        page.locator("#seed-num input").fill("31337")  # a seed no other request used: the teacher is computed
        page.locator("#count-num input").fill("16" if SAVE else "4")
        page.evaluate(OBSERVE)
        page.get_by_role("button", name="Generate").click()
        page.locator("#panel-2 img").first.wait_for(state="visible", timeout=120_000)
        if SAVE:  # the students are in, the teacher's panel shows its progress
            page.locator("#caption-0").filter(has_text="computing").wait_for(timeout=120_000)
            page.wait_for_timeout(1000)
            _save(page, "compare_streaming", tmp_path, full_page=False)
        for i in range(6):
            page.locator(f"#panel-{i} img").first.wait_for(state="visible", timeout=300_000)
        page.locator("#caption-5").filter(has_text="DP-DMD").wait_for(timeout=30_000)
        order = page.evaluate("window.__order")
        assert sorted(order) == list(range(6))
        assert order.index(0) == 5, order  # the 50-step teacher comes last
        assert all(order.index(i) < order.index(1) for i in (2, 3, 4, 5)), order  # students before teachers
        if "mnist" in page.locator("#summary").inner_text():  # a 50-step UNet takes long enough to be seen
            assert page.evaluate("window.__computing")
        assert "class 3" in page.locator("#summary").inner_text()
        assert "NFE" in page.locator("#caption-0").inner_text()
        shot = _save(page, "compare", tmp_path)
        if SAVE:
            shutil.copy(SHOTS / "compare.png", ROOT / "assets" / "screenshot_compare.png")
        # A repeated click: the cached teacher is now the first panel in.
        page.evaluate(OBSERVE)
        page.get_by_role("button", name="Generate").click()
        page.locator("#caption-0").filter(has_text="cached").wait_for(timeout=120_000)
        assert shot.exists()
    finally:
        page.close()


def test_compare_discrete_family(url, browser, tmp_path):
    page = _open(browser, url)
    try:
        page.locator("#family-dd input").click()
        page.get_by_role("option", name="ring-mix-tokens", exact=True).click()
        page.locator("#steps-dd input").wait_for(state="visible", timeout=30_000)  # only for discrete families
        page.wait_for_function("() => document.querySelector('#count-num input').value === '2048'", timeout=30_000)
        assert page.locator("#steps-dd input").input_value() == "2"
        assert page.locator("#cfg-num input").input_value() == "1"  # masked teachers are compared at CFG 1
        page.get_by_role("button", name="Generate").click()
        for i in range(6):
            page.locator(f"#panel-{i} img").first.wait_for(state="visible", timeout=300_000)
        page.locator("#caption-0").filter(has_text="NFE 100").wait_for(timeout=300_000)
        caps = [page.locator(f"#caption-{i}").inner_text() for i in range(6)]
        assert all(re.search(r"\btv \d", c) and "lower is better" in c for c in caps), caps  # exact TV
        assert "D-MMD, 2 steps" in caps[2] and "NFE 2 " in caps[2]
        assert "without the noise input" in caps[3] and "NFE 2 " in caps[3]
        assert "NFE 2 " in caps[1] and "NFE 8 " in caps[4] and "no network" in caps[5]
        assert "student steps k = 2" in page.locator("#summary").inner_text()
        if SAVE:
            page.wait_for_timeout(1000)
        _save(page, "compare_tokens", tmp_path)
        page.locator("#family-dd input").click()  # back to a continuous family: the step choice goes away
        page.get_by_role("option", name="ring-mix", exact=True).click()
        page.locator("#steps-dd input").wait_for(state="hidden", timeout=30_000)
    finally:
        page.close()


def test_compare_counting_benchmarks(url, browser, tmp_path):
    """motion-mix: every panel an animated clip (a GIF) with mean flow and dynamic degree under it;
    mnist-uncond (when its students are shipped): one class choice, a grid over a digit histogram per panel
    with digit KL and digits covered."""
    page = _open(browser, url)
    try:
        _pick(page, "#family-dd", "motion-mix")
        page.wait_for_function("() => document.querySelector('#count-num input').value === '16'", timeout=30_000)
        page.get_by_role("button", name="Generate").click()
        for i in range(6):
            page.locator(f"#panel-{i} img").first.wait_for(state="visible", timeout=300_000)
        page.locator("#caption-0").filter(has_text="NFE").wait_for(timeout=300_000)
        srcs = [page.locator(f"#panel-{i} img").first.get_attribute("src") for i in range(6)]
        assert all(s and ".gif" in s for s in srcs), srcs
        caps = [page.locator(f"#caption-{i}").inner_text() for i in range(6)]
        assert all("mean flow" in c and "dynamic degree" in c for c in caps), caps
        if SAVE:
            page.wait_for_timeout(1000)
            _save(page, "compare_motion", tmp_path)
        from app.common import get_zoo

        if "mnist-uncond" not in get_zoo().families:  # the page's models: its students are not shipped
            return
        _pick(page, "#family-dd", "mnist-uncond")
        page.wait_for_function("() => document.querySelector('#count-num input').value === '64'", timeout=30_000)
        assert _class_options(page) == ["all"]
        page.locator("#count-num input").fill("64" if SAVE else "4")
        page.get_by_role("button", name="Generate").click()
        for i in range(6):
            page.locator(f"#panel-{i} img").first.wait_for(state="visible", timeout=300_000)
        page.locator("#caption-0").filter(has_text="NFE").wait_for(timeout=300_000)
        caps = [page.locator(f"#caption-{i}").inner_text() for i in range(6)]
        assert all("digit KL" in c and "digits covered" in c for c in caps), caps
        if SAVE:
            page.wait_for_timeout(1000)
            _save(page, "compare_mnist_uncond", tmp_path)
    finally:
        page.close()


def _boxes_overlap(a: dict, b: dict) -> bool:
    return not (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
                or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])


def _pick(page, dropdown: str, option: str) -> None:
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def _class_options(page) -> list[str]:
    page.locator("#class-dd input").click()
    opts = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    return [o.replace("✓", "").strip() for o in opts]  # the selected one carries a check mark


def test_compare_titles_classes_and_no_stale_panels(url, browser, tmp_path):
    """What a newcomer saw: titles under Gradio's label badge, ten classes for every family, and after an
    error five panels of the previous run beside an error box."""
    page = _open(browser, url)
    try:
        _pick(page, "#family-dd", "ring-mix")
        page.wait_for_function("() => document.querySelector('#count-num input').value === '2048'", timeout=30_000)
        assert _class_options(page) == ["all", "0", "1", "2", "3"]  # ring-mix has 4 classes
        page.locator("#count-num input").fill("64")
        page.get_by_role("button", name="Generate").click()
        for i in range(6):
            page.locator(f"#panel-{i} img").first.wait_for(state="visible", timeout=300_000)
        page.locator("#caption-0").filter(has_text="NFE 100").wait_for(timeout=300_000)
        for i, title in enumerate(("Teacher, 50 steps", "Teacher cut to 4 steps", "DMD, 1 step", "DMD2-SGTS, 4 steps",
                                   "Phased DMD, 4 steps / 4 phases", "DP-DMD, 4 steps")):
            assert not page.locator(f"#panel-{i} [data-testid='block-label']").first.is_visible()  # no badge
            assert page.locator(f"#panel-{i} button[aria-label]").count() == 0  # no corner icons over the panel
            caption = page.locator(f"#caption-{i}")
            assert caption.inner_text().startswith(title)  # the title once, in the caption
            assert not _boxes_overlap(caption.bounding_box(), page.locator(f"#panel-{i} img").first.bounding_box())
        assert "modes covered" in page.locator("#caption-2").inner_text()
        # An error (seed 1.5 is refused): no panel of the run before stays, only the titles.
        page.locator("#seed-num input").fill("1.5")
        page.get_by_role("button", name="Generate").click()
        page.get_by_text("seed must be a whole number").first.wait_for(timeout=60_000)
        for i in range(6):
            assert page.locator(f"#panel-{i} img").count() == 0, i
            assert "NFE" not in page.locator(f"#caption-{i}").inner_text()
        _pick(page, "#family-dd", "mnist" if "mnist" in page.locator("#family-dd").inner_text() else "ring-mix-tokens")
        page.wait_for_timeout(500)
        assert len(_class_options(page)) in (5, 11)  # mnist: all and 0..9; ring-mix-tokens: all and 0..3
    finally:
        page.close()


def test_collapse_lab_trains_two_methods_side_by_side(url, browser, tmp_path):
    page = _open(browser, url, height=1700)
    try:
        page.get_by_role("tab", name="Collapse lab").click()
        if SAVE:  # the screenshot shows a real run: the app's default start and budget
            from app import live

            live.DISTILL_INIT_ITERS = 500
        else:
            page.locator("#lab-iters input").fill("4")
        page.locator("#lab-btn").click()
        status = page.locator("#lab-status")
        status.filter(has_text="update").wait_for(timeout=300_000)  # streaming: progress before the end
        status.filter(has_text="done in").wait_for(timeout=600_000)
        text = status.inner_text()
        assert text.count("✓") == 2 and "dmd-1s" in text and "phased-dmd-4s4p" in text
        if SAVE:
            page.wait_for_timeout(1500)
        for el in ("#lab-scatter-a", "#lab-scatter-b", "#lab-curves"):
            page.locator(f"{el} img").first.wait_for(state="visible", timeout=60_000)
        _save(page, "collapse_lab", tmp_path)
    finally:
        page.close()


def test_tab_tour_screenshots(url, browser, tmp_path):
    """Phases, Diversity and Distill live each render their outputs (screenshots kept with PDMD_SAVE_SCREENSHOT=1)."""
    page = _open(browser, url, height=1700)
    try:
        page.get_by_role("tab", name="Phases").click()
        page.locator("#phases-fig img").first.wait_for(state="visible", timeout=30_000)  # drawn at load
        page.locator("#snr-fig img").first.wait_for(state="visible", timeout=30_000)
        page.get_by_role("button", name="Show phases").click()
        page.locator("#trajectory-btn").click()
        page.locator("#trajectory-anim img").first.wait_for(state="visible", timeout=300_000)
        if SAVE:
            page.wait_for_timeout(1500)  # let the screenshot settle
        _save(page, "phases", tmp_path)
        page.get_by_role("tab", name="Diversity").click()
        page.get_by_role("button", name="Embed").click()
        page.get_by_role("button", name="Compare within the class").click()
        page.get_by_text("coverage of teacher").wait_for(timeout=300_000)
        page.get_by_text("cosine similarity (lower = more varied)").wait_for(timeout=300_000)
        heads = [h["height"] for h in (th.bounding_box() for th in page.locator("#diversity-table th").all())]
        cell = page.locator("#diversity-table td").first.bounding_box()["height"]  # one line of the body
        assert max(heads) < 1.3 * cell, (heads, cell)  # headers on one line: never broken inside a word
        if SAVE:
            page.wait_for_timeout(1500)  # let the screenshot settle
        _save(page, "diversity", tmp_path)
        page.get_by_role("tab", name="Distill live").click()
        page.get_by_label("iterations (4..2000)").fill("40")
        page.get_by_role("button", name="Distill").click()
        page.get_by_text("done:").wait_for(timeout=300_000)
        if SAVE:
            page.wait_for_timeout(1500)  # let the screenshot settle
        _save(page, "distill_live", tmp_path)
    finally:
        page.close()
