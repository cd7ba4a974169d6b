"""The web playground in a real browser: Debian's chromium driven by Playwright against `rnnkit serve`."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from rnnkit.server import create_app
from serving import running, train_lm

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "playground.png"

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None,
                                reason=f"no {CHROMIUM}: install Debian's chromium (apt-get install chromium); "
                                       ".ci/run does")


def test_textgen_streams_into_the_page(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    app = create_app({"tiny-lm": train_lm(tmp_path)})
    with running(app) as url, sync_api.sync_playwright() as playwright:
        # A fresh profile; no background connections (this machine's network is closed to them).
        browser = playwright.chromium.launch_persistent_context(
            tmp_path / "profile", executable_path=CHROMIUM, headless=True, viewport={"width": 1000, "height": 560},
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.select_option("#model", "tiny-lm")
            assert page.is_visible("#panel-textgen") and not page.is_visible("#panel-classify")
            page.fill("#textgen-prime", "the cat ")
            page.fill("#textgen-tokens", "120")
            page.fill("#textgen-temperature", "0")
            page.click("#textgen-run")
            page.wait_for_function("document.querySelector('#textgen-output').textContent.length > 120",
                                   timeout=30_000)
            page.wait_for_function("document.querySelector('#status').textContent.includes('streamed')",
                                   timeout=30_000)
            text = page.text_content("#textgen-output")
            assert text.startswith("the cat ") and "sat on the" in text[len("the cat "):]  # the model's words
            picture = page.screenshot(full_page=True)
        finally:
            browser.close()
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(picture)).convert("L"), dtype=float)
    assert pixels.std() > 10  # not a blank page: dark header, text, panels
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.write_bytes(picture)
