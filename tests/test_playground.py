"""The web playground in a real browser: Debian's chromium driven by Playwright against `rnnkit serve`."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.server import create_app
from rnnkit.tasks.base import Task, TaskConfig
from serving import running, train_lm

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "playground.png"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which(CHROMIUM) is None,
                                reason=f"no {CHROMIUM}: install Debian's chromium (apt-get install chromium); "
                                       ".ci/run does")]  # slow: a model trains and a browser starts


class StubForecaster(Task):
    """Answers as the forecaster's JSON does (median and quantiles per series): the page is tested
    on the task's request and response, not on a trained forecaster."""

    name = "forecast"
    model_type = "test_playground_forecast"
    config_class = TaskConfig
    request_schema = {"type": "object", "required": ["series"], "properties": {
        "series": {"type": "array", "items": {"type": "object", "required": ["values"]}},
        "horizon": {"type": "integer", "minimum": 1}}}

    def predict_json(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        last, h = request["series"][0]["values"][-1], request.get("horizon", 4)
        median = [last + i for i in range(h)]
        return {"forecasts": [{"id": "0", "median": median, "method": "model", "quantiles": {
            "0.1": [v - 5 for v in median], "0.5": median, "0.9": [v + 5 for v in median]}}]}


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    directory = tmp_path_factory.mktemp("playground")
    stub = StubForecaster(progress=False)
    stub.model, stub.requests = torch.nn.Linear(1, 1), []
    lm = rnnkit.load(train_lm(directory))
    step = lm.step_streams

    def step_like_a_real_model(slots: list) -> list:  # the server hands text over per slice of steps: a
        time.sleep(0.003)                               # tiny model would finish within one
        return step(slots)

    lm.step_streams = step_like_a_real_model
    app = create_app({"tiny-lm": lm, "stub-forecast": stub})
    with running(app) as url, sync_api.sync_playwright() as playwright:
        # A fresh profile; no background connections (this machine's network is closed to them).
        browser = playwright.chromium.launch_persistent_context(
            directory / "profile", executable_path=CHROMIUM, headless=True, viewport={"width": 1000, "height": 560},
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            tab = browser.new_page()
            tab.goto(url + "/")
            tab.stub = stub
            yield tab
        finally:
            browser.close()


def test_textgen_streams_into_the_page(page: Any) -> None:
    page.select_option("#model", "tiny-lm")
    assert page.is_visible("#panel-textgen") and not page.is_visible("#panel-forecast")
    page.fill("#textgen-prime", "the cat ")
    page.fill("#textgen-tokens", "120")
    page.fill("#textgen-temperature", "0")
    page.click("#textgen-run")
    page.wait_for_function("document.querySelector('#status').textContent.includes('streamed')", timeout=30_000)
    text = page.text_content("#textgen-output")
    assert len(text) == len("the cat ") + 120 and "sat on the" in text[len("the cat "):]  # the model's words
    pieces = int(page.text_content("#status").split()[0])
    assert pieces > 5  # arrived piece by piece, not as one answer
    picture = page.screenshot(full_page=True)
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(picture)).convert("L"), dtype=float)
    assert pixels.std() > 10  # not a blank page: dark header, text, panels
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.write_bytes(picture)


def test_forecast_form_sends_the_series_and_plots_forecast_and_interval(page: Any) -> None:
    page.select_option("#model", "stub-forecast")
    assert page.is_visible("#panel-forecast") and not page.is_visible("#panel-textgen")
    page.fill("#forecast-series", "10, 12, 11, 13 14")
    page.fill("#forecast-start", "2020-01-31")
    page.fill("#forecast-horizon", "3")
    page.click("#forecast-run")
    page.wait_for_selector("#forecast-svg polygon.interval", timeout=30_000)
    assert page.stub.requests[-1] == {"series": [{"values": [10, 12, 11, 13, 14], "dates": [
        "2020-01-31", "2020-02-29", "2020-03-31", "2020-04-30", "2020-05-31"]}], "horizon": 3}
    forecast = page.get_attribute("#forecast-svg polyline.forecast", "points").split()
    band = page.get_attribute("#forecast-svg polygon.interval", "points").split()
    assert len(forecast) == 1 + 3 and len(band) == 2 * 3  # from the last value on; lower and upper edges
    assert "interval 0.1-0.9 shaded" in page.text_content("#forecast-output")
