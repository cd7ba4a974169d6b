"""`rnnkit serve`: routes built from the task contract, limits, errors, streaming and batching."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import rnnkit
from rnnkit.cli import app as cli
from rnnkit.errors import RnnkitError
from rnnkit.server import Limits, create_app
from serving import running, tiny_bundles

LIMITS = Limits(max_body_bytes=4096, max_tokens=500, max_batch=8, max_streams=4)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="module")
def tasks(bundles: dict[str, Path]) -> dict[str, Any]:
    return {name: rnnkit.load(path) for name, path in bundles.items()}


@pytest.fixture(scope="module")
def client(bundles: dict[str, Path]) -> TestClient:
    return TestClient(create_app(bundles, limits=LIMITS))


def events(text: str) -> list[tuple[str, dict]]:
    """Server-sent events as (event name, JSON data)."""
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields.get("event", "message"), json.loads(fields["data"])))
    return out


def streamed_text(text: str) -> str:
    parsed = events(text)
    assert parsed[-1] == ("done", {}) and all(name == "message" for name, _ in parsed[:-1])
    return "".join(data["text"] for _, data in parsed[:-1])


# ------------------------------------------------------------------------------ what is served


def test_models_lists_every_bundle_with_its_task_schemas(client: TestClient, tasks: dict[str, Any]) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    listed = {m["name"]: m for m in response.json()["models"]}
    assert set(listed) == {"clf", "lm", "tr"}
    for name, task in tasks.items():
        assert listed[name] == {"name": name, **json.loads(json.dumps(task.describe()))}
    assert [listed[n]["streams"] for n in ("clf", "lm", "tr")] == [False, True, False]
    assert client.get("/healthz").json() == {"status": "ok", "models": 3, "streams": {"clf": 0, "lm": 0, "tr": 0}}


def test_openapi_documents_each_model_with_its_request_schema(client: TestClient, tasks: dict[str, Any]) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    body = paths["/v1/clf/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == tasks["clf"].request_schema
    assert "/v1/lm/generate" in paths and "/v1/clf/generate" not in paths


def test_predict_answers_as_the_task_does(client: TestClient, tasks: dict[str, Any]) -> None:
    request = {"texts": ["a great film", "an awful plot", "okay"]}
    answer = client.post("/v1/clf/predict", json=request).json()
    assert [p["label"] for p in answer["predictions"]] == ["pos", "neg", "meh"]  # the trained model answers
    assert answer == json.loads(json.dumps(tasks["clf"].predict_checked(request)))
    request = {"texts": ["cat dog"], "attention": True}
    answer = client.post("/v1/tr/predict", json=request).json()["translations"][0]
    assert len(answer["attention"]) == len(answer["target_tokens"]) and answer["source_tokens"]
    request = {"prime": "the ", "max_tokens": 40, "temperature": 0}
    text = client.post("/v1/lm/predict", json=request).json()["text"]
    assert text == tasks["lm"].generate("the ", 40, temperature=0) and "sat on the" in text


def test_generate_streams_pieces_then_done(client: TestClient, tasks: dict[str, Any]) -> None:
    request = {"prime": "the dog ", "max_tokens": 60, "temperature": 0}
    response = client.post("/v1/lm/generate", json=request)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert "the dog " + streamed_text(response.text) == tasks["lm"].generate("the dog ", 60, temperature=0)
    assert streamed_text(client.post("/v1/lm/generate", json={"max_tokens": 0}).text) == ""


def test_generation_ends_at_its_stop_strings_each_stream_at_its_own(client: TestClient,
                                                                    tasks: dict[str, Any]) -> None:
    lm, prime = tasks["lm"], "the dog "
    full = lm.generate(prime, 120, temperature=0)[len(prime):]
    assert "sat on the cat" in full
    cases = (["cat s"], ["zzz", "on the"], ["the cax"], ["zzz"])  # "the cax": "the ca" is held, then sent
    ends = [full[:min((full.find(s) for s in stop if s in full), default=len(full))] for stop in cases]
    for stop, expected in zip(cases, ends):
        request = {"prime": prime, "max_tokens": 120, "temperature": 0, "stop": stop}
        assert streamed_text(client.post("/v1/lm/generate", json=request).text) == expected
        assert client.post("/v1/lm/predict", json=request).json()["text"] == prime + expected
    slots = [lm.open_stream({"prime": prime, "max_tokens": 120, "temperature": 0, "stop": stop}) for stop in cases]
    texts = [""] * len(slots)
    while not all(slot.done for slot in slots):  # stepped together, each ending at its own stop
        for k, pieces in enumerate(lm.step_streams(slots)):
            texts[k] += "".join(piece["text"] for piece in pieces)
    assert texts == ends
    response = client.post("/v1/lm/generate", json={"stop": ["\n", ""]})
    assert response.status_code == 422 and response.json()["error"].startswith("request.stop[1] is empty")


def test_the_playground_and_its_files_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "rnnkit playground" in page.text and "/static/app.js" in page.text
    assert "function stream(" in client.get("/static/app.js").text
    assert client.get("/static/style.css").status_code == 200


# ------------------------------------------------------------------------------ refusals


def cli_message(task: Any, request: Any) -> str:
    """The line the CLI would print for ``request`` (the contract's own check)."""
    with pytest.raises(RnnkitError) as caught:
        task.predict_checked(request)
    return str(caught.value)


@pytest.mark.parametrize("path, body, status, message", [
    ("/v1/clf/predict", b'{"texts": ["good"', 422, r"^the request is not valid JSON: Expecting .* line 1 column 18;"),
    ("/v1/clf/predict", b'{"texts": [NaN]}', 422, r"NaN is not a JSON number"),
    ("/v1/clf/predict", b'{"texts": "one text"}', 422, r"^request.texts must be array, got a string$"),
    ("/v1/clf/predict", b'{"texts": ["a"], "extra": 1}', 422, r"^request has unknown key\(s\) 'extra'"),
    ("/v1/clf/predict", b'["a"]', 422, r"^request must be object, got an array$"),
    ("/v1/lm/predict", b'{"max_tokens": "ten"}', 422, r"^request.max_tokens must be integer, got a string$"),
    ("/v1/lm/predict", b'{"max_tokens": 501}', 422, r"request.max_tokens is 501, above this server's limit of 500"),
    ("/v1/lm/generate", b'{"max_tokens": 501}', 422, r"limit of 500; ask for at most 500"),
    ("/v1/lm/generate", b'{"prime": "Zebra"}', 422, r"the prime contains 3 token\(s\) the model never saw"),
    ("/v1/clf/predict", json.dumps({"texts": ["a"] * 9}).encode(), 422, r"request.texts has 9 items, above .* 8;"),
    ("/v1/clf/predict", json.dumps({"texts": ["a" * 5000]}).encode(), 413, r"over this server's limit of 4096 bytes"),
    ("/v1/nope/predict", b'{}', 404, r"^no model named 'nope' on this server; loaded: clf, lm, tr$"),
    ("/v1/nope/generate", b'{}', 404, r"no model named 'nope'"),
    ("/v1/clf/generate", b'{"texts": ["a"]}', 404, r"does not stream; POST /v1/clf/predict instead"),
])
def test_a_bad_request_gets_a_status_and_one_line_then_the_server_goes_on(
        client: TestClient, path: str, body: bytes, status: int, message: str) -> None:
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert "\n" not in error and re.search(message, error), error
    good = client.post("/v1/clf/predict", json={"texts": ["a great film"]})
    assert good.status_code == 200 and good.json()["predictions"][0]["label"] == "pos"


def test_wrong_types_get_the_same_line_as_the_cli(client: TestClient, tasks: dict[str, Any]) -> None:
    for name, request in (("clf", {"texts": [1, 2]}), ("tr", {"texts": ["a"], "beam": 0}),
                          ("lm", {"temperature": True}), ("tr", {"beam": 2})):
        response = client.post(f"/v1/{name}/predict", json=request)
        assert response.status_code == 422
        assert response.json()["error"] == cli_message(tasks[name], request)


def test_a_body_without_content_length_is_cut_at_the_limit(client: TestClient) -> None:
    chunks = (b'{"texts": ["' + b"a" * 1000 for _ in range(6))  # chunked: no Content-Length to refuse early
    response = client.post("/v1/clf/predict", content=chunks, headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_a_token_is_required_when_the_server_has_one(bundles: dict[str, Path]) -> None:
    secured = TestClient(create_app(bundles, token="s3cret", limits=LIMITS))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        response = secured.post("/v1/clf/predict", json={"texts": ["a"]}, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"].startswith("missing or wrong bearer token; send the header")
    assert secured.get("/v1/models").status_code == 401
    assert secured.post("/v1/lm/generate", json={"max_tokens": 5}).status_code == 401  # before a stream opens
    assert secured.post("/v1/nope/predict", json={}).status_code == 401  # no model names leak without it
    ok = {"Authorization": "Bearer s3cret"}
    assert secured.post("/v1/clf/predict", json={"texts": ["a"]}, headers=ok).status_code == 200
    assert secured.get("/v1/models", headers=ok).status_code == 200
    assert secured.get("/healthz").status_code == 200 and secured.get("/").status_code == 200


def test_an_unexpected_failure_is_a_500_line_and_the_server_goes_on(bundles: dict[str, Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clf = rnnkit.load(bundles["clf"])
    app = create_app({"clf": clf}, limits=LIMITS)
    client = TestClient(app, raise_server_exceptions=False)
    probabilities = clf.probabilities

    def broken(texts: list) -> Any:
        if "boom" in texts:
            raise ZeroDivisionError("a bug")
        return probabilities(texts)

    monkeypatch.setattr(clf, "probabilities", broken)
    response = client.post("/v1/clf/predict", json={"texts": ["boom"]})
    assert response.status_code == 500 and response.json() == {
        "error": "internal error (ZeroDivisionError: a bug); the server goes on"}
    assert client.post("/v1/clf/predict", json={"texts": ["a great film"]}).json()["predictions"][0]["label"] == "pos"


def test_predictions_arriving_together_are_answered_in_one_turn_each_on_its_own(
        bundles: dict[str, Path], tasks: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    clf = rnnkit.load(bundles["clf"])
    probabilities, batches = clf.probabilities, []

    def counted(texts: list) -> Any:
        batches.append(len(texts))
        if "boom" in texts:
            raise ZeroDivisionError("a bug")
        return probabilities(texts)

    monkeypatch.setattr(clf, "probabilities", counted)
    app = create_app({"clf": clf}, limits=LIMITS)
    served = app.state.models["clf"]
    requests = [{"texts": ["a great film", "okay"]}, {"texts": ["an awful plot"]}, {"texts": 3},
                {"texts": ["boom"]}, {"texts": ["a great film"]}]
    answers: list[Any] = [None] * len(requests)
    gate = threading.Event()
    with running(app) as url:
        served.worker.submit(gate.wait, 30)  # hold the model until every request waits

        def post(i: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                answers[i] = http.post("/v1/clf/predict", json=requests[i])

        threads = [threading.Thread(target=post, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(served.predictor.waiting) < len(requests) and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        for thread in threads:
            thread.join(timeout=60)
    assert served.predictor.turns == {5: 1}  # one turn for all five
    assert batches[0] == 5  # the valid requests' texts as one batch, which failed on "boom": then one by one
    for i in (0, 1, 4):
        assert answers[i].status_code == 200
        assert answers[i].json() == json.loads(json.dumps(tasks["clf"].predict_checked(requests[i])))
    assert answers[2].status_code == 422 and answers[2].json()["error"] == "request.texts must be array, got a number"
    assert answers[3].status_code == 500 and "ZeroDivisionError: a bug" in answers[3].json()["error"]


def test_a_generation_that_fails_midway_ends_with_an_error_event(bundles: dict[str, Path]) -> None:
    app = create_app({"lm": bundles["lm"]}, limits=LIMITS)
    task, steps = app.state.models["lm"].task, []
    step = task.step_streams

    def failing(slots: list) -> list:
        steps.append(len(slots))
        if len(steps) == 3:
            raise RuntimeError("out of memory")
        return step(slots)

    task.step_streams = failing
    client = TestClient(app)
    parsed = events(client.post("/v1/lm/generate", json={"prime": "the ", "max_tokens": 50, "temperature": 0}).text)
    assert [name for name, _ in parsed][-1] == "error" and {name for name, _ in parsed[:-1]} == {"message"}
    assert "".join(data["text"] for _, data in parsed[:-1]) == task.generate("the ", 2, temperature=0)[4:]
    assert parsed[-1][1] == {"error": "generation failed: out of memory"}  # the two tokens sampled, then the error
    assert streamed_text(client.post("/v1/lm/generate", json={"max_tokens": 5}).text)  # the next one runs
    with pytest.raises(RnnkitError, match="max_streams must be a positive integer, got 0"):
        Limits(max_streams=0)


# ------------------------------------------------------------------------------ streams on a real server


def test_concurrent_generations_step_together_each_with_its_own_options(bundles: dict[str, Path],
                                                                       tasks: dict[str, Any]) -> None:
    app = create_app({"lm": bundles["lm"]}, limits=LIMITS)
    served = app.state.models["lm"]
    requests = [{"prime": "the cat ", "max_tokens": 300, "temperature": 0},
                {"prime": "the dog ", "max_tokens": 200, "temperature": 0},
                {"prime": "the ", "max_tokens": 250, "temperature": 1.0, "seed": 5}]
    texts: list[Any] = [None] * len(requests)
    gate = threading.Event()
    with running(app) as url:
        served.worker.submit(gate.wait, 30)  # hold the model until every request has arrived

        def generate(i: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                response = http.post("/v1/lm/generate", json=requests[i])
                texts[i] = requests[i]["prime"] + streamed_text(response.text)

        threads = [threading.Thread(target=generate, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while served.batcher.opening < len(requests) and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        for thread in threads:
            thread.join(timeout=60)
    assert max(served.batcher.batch_sizes) == 3  # all three stepped as one batch
    lm = tasks["lm"]
    for request, text in zip(requests, texts):  # each as if it had run alone: its own state, length, sampling
        assert text == lm.predict_checked(request)["text"]
    assert len(texts[0]) - len("the cat ") == 300 and texts[2] != lm.generate("the ", 250, temperature=0)


def test_a_client_that_vanishes_mid_stream_frees_its_slot(bundles: dict[str, Path], tasks: dict[str, Any]) -> None:
    app = create_app({"lm": bundles["lm"]}, limits=LIMITS)
    served = app.state.models["lm"]
    step = served.task.step_streams

    def slow_step(slots: list) -> list:  # so that 500 tokens take seconds, far longer than the test waits
        time.sleep(0.01)
        return step(slots)

    served.task.step_streams = slow_step
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        with http.stream("POST", "/v1/lm/generate", json={"max_tokens": 500, "temperature": 0}) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")  # the first piece has arrived: the stream is live
            assert http.get("/healthz").json()["streams"] == {"lm": 1}
        # the connection is closed here, 1 piece into 500
        deadline = time.monotonic() + 20
        while http.get("/healthz").json()["streams"]["lm"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.get("/healthz").json()["streams"] == {"lm": 0}
        assert sum(served.batcher.batch_sizes.values()) < 500  # left out of the batch, not run to its end
        again = http.post("/v1/lm/generate", json={"prime": "the ", "max_tokens": 20, "temperature": 0})
        assert "the " + streamed_text(again.text) == tasks["lm"].generate("the ", 20, temperature=0)


def test_a_task_that_streams_without_batching_streams_one_request_at_a_time(bundles: dict[str, Path],
                                                                            tasks: dict[str, Any]) -> None:
    lm = rnnkit.load(bundles["lm"])
    lm.batches_streams = False  # as a generating task that implements only stream_json
    client = TestClient(create_app({"lm": lm}, limits=LIMITS))
    text = streamed_text(client.post("/v1/lm/generate", json={"prime": "the ", "max_tokens": 30,
                                                              "temperature": 0}).text)
    assert "the " + text == tasks["lm"].generate("the ", 30, temperature=0)
    assert client.app.state.models["lm"].batcher.batch_sizes == {}


def test_too_many_streams_on_one_model_are_refused_with_429(bundles: dict[str, Path]) -> None:
    app = create_app({"lm": bundles["lm"]}, limits=Limits(max_streams=1))
    served = app.state.models["lm"]
    served.batcher.opening = 1  # one generation is being opened
    response = TestClient(app).post("/v1/lm/generate", json={"max_tokens": 5})
    assert response.status_code == 429 and "its limit; retry when one has finished" in response.json()["error"]


# ------------------------------------------------------------------------------ the command


def test_serve_refuses_bad_bundle_arguments_in_one_line(bundles: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["serve", str(tmp_path / "missing")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "error: " in result.output
    result = runner.invoke(cli, ["serve", f"a={bundles['clf']}", f"a={bundles['lm']}"])
    assert result.exit_code == 2 and "two bundles are named 'a'; pass NAME=PATH" in result.output
    result = runner.invoke(cli, ["serve", f"a/b={bundles['clf']}"])
    assert result.exit_code == 2 and "model name 'a/b'" in result.output


@pytest.mark.slow
def test_the_readmes_serve_commands_work_as_written(bundles: dict[str, Path], tmp_path: Path) -> None:
    """The README's `rnnkit serve` block, run as written (tiny bundles under its names, a free port)."""
    import shlex
    import shutil
    import socket
    import subprocess
    import sys

    import torch
    from test_readme import code_blocks
    from test_text import CORPUS, TINY_LM

    from rnnkit import TextGenerator

    block = next(b for b in code_blocks("sh") if "rnnkit serve" in b)
    lines = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    serve, curls = lines[0], lines[1:]
    assert serve.startswith("rnnkit serve lm.rnnkit clf.rnnkit") and len(curls) == 2 and all(c.startswith("curl ") for c in curls)
    shutil.copytree(bundles["clf"], tmp_path / "clf.rnnkit")
    torch.manual_seed(0)  # the README's LM is Shakespeare's: its prime "ROMEO:" must be in the vocabulary
    TextGenerator(**TINY_LM).fit(CORPUS + "\nROMEO: " + CORPUS.upper()).save(tmp_path / "lm.rnnkit")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    args = [a.replace("8000", port) for a in shlex.split(serve)[1:]]
    server = subprocess.Popen([sys.executable, "-m", "rnnkit", *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "rnnkit serve did not start"
            time.sleep(0.1)
        out = [subprocess.run(shlex.split(c.replace("localhost:8000", f"127.0.0.1:{port}")), capture_output=True,
                              text=True, timeout=60).stdout for c in curls]
    finally:
        server.terminate()
        server.wait(timeout=30)
    predictions = json.loads(out[0])["predictions"]
    assert len(predictions) == 1 and predictions[0]["label"] in ("neg", "pos")
    assert streamed_text(out[1]), out[1]  # pieces of text, then the done event


def test_a_piece_longer_than_the_bars_limit_is_refused() -> None:
    from rnnkit.server.limits import HTTPError

    Limits(max_bars=16).check({"bars": 16})
    with pytest.raises(HTTPError, match=r"request.bars is 17, above this server's limit of 16; ask for at most 16"):
        Limits(max_bars=16).check({"bars": 17})
