"""The HTTP face of rnnkit: every loaded bundle served through the task contract alone.

``create_app`` loads each bundle once (:func:`rnnkit.load`) and serves it under its name:

- ``GET /v1/models``: each model's name and :meth:`~rnnkit.tasks.base.Task.describe` (task,
  whether it streams, request and response JSON Schemas);
- ``POST /v1/{name}/predict``: the task's request JSON in, ``predict_checked``'s response out
  (requests arriving together are answered together, :class:`.batcher.PredictBatcher`);
- ``POST /v1/{name}/generate``: for a streaming task, server-sent events, one ``data:`` JSON
  piece each, then ``event: done``; tasks that batch streams are stepped together
  (:mod:`.batcher`), others stream one request at a time;
- ``GET /healthz``, the OpenAPI description at ``/openapi.json`` and ``/docs``, and the web
  playground at ``/`` (plain files in ``static/``).

Nothing here knows a task: a task added later is served by the same routes. Every refusal is a
status and one line, ``{"error": "..."}``: 401 without the bearer token (when one is set), 404
for an unknown model, 413 for a body over the limit, 422 for malformed JSON, a request that
breaks the task's schema or a limit (the same line ``rnnkit`` prints), 429 when a model runs
its most streams. An unexpected exception is a 500 with one line, and the server goes on.
"""

from __future__ import annotations

import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..errors import RnnkitError
from ..tasks.base import Task, dumps
from .batcher import PredictBatcher, StreamBatcher
from .limits import HTTPError, Limits, error_body, read_json

log = logging.getLogger("rnnkit.server")
STATIC = Path(str(files("rnnkit.server") / "static"))


class ServedModel:
    """One loaded task, its worker thread (all its model calls, one at a time) and its streams."""

    def __init__(self, name: str, task: Task, limits: Limits) -> None:
        self.name, self.task = name, task
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rnnkit-{name}")
        self.batcher = StreamBatcher(task, self.worker, limits.max_streams)
        self.predictor = PredictBatcher(task, self.worker)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.task.describe()}

    async def stream(self, request: Any) -> AsyncIterator[dict[str, Any]]:
        """The pieces of a generation: batched with others when the task can, else on its own."""
        if self.task.batches_streams:
            return await self.batcher.stream(request)
        pieces = await self.batcher.call(lambda: iter(self.task.stream_checked(request)))
        return self._one_stream(pieces)

    async def _one_stream(self, pieces: Any) -> AsyncIterator[dict[str, Any]]:
        done = object()
        while (piece := await self.batcher.call(next, pieces, done)) is not done:
            yield piece  # a client gone between two pieces ends this loop: nothing more is computed


def load_models(bundles: Mapping[str, Union[str, Path, Task]], limits: Limits) -> dict[str, ServedModel]:
    """Each bundle (a path, or a task already in memory) loaded once, under its name."""
    from .. import load

    models = {}
    for name, bundle in bundles.items():
        task = bundle if isinstance(bundle, Task) else load(bundle)
        if not isinstance(task, Task):
            raise RnnkitError(f"{bundle} holds a {type(task).__name__}, which is not a task and cannot be served")
        models[name] = ServedModel(name, task, limits)
    return models


def create_app(bundles: Mapping[str, Union[str, Path, Task]], token: Optional[str] = None,
               limits: Limits = Limits()) -> FastAPI:
    """The FastAPI app serving ``bundles`` (name -> bundle path or fitted task); see the module docstring."""
    models = load_models(bundles, limits)
    app = FastAPI(title="rnnkit", version=__version__,
                  description="Recurrent models served through rnnkit's task contract.")
    app.state.models = models

    def authorize(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPError(401, "missing or wrong bearer token; send the header 'Authorization: Bearer <token>' "
                                 "with the token the server was started with")

    def model(name: str) -> ServedModel:
        if name not in models:
            raise HTTPError(404, f"no model named {name!r} on this server; loaded: {', '.join(models) or 'none'}")
        return models[name]

    async def accept(request: Request) -> Any:
        """The request's JSON, once the token, the body's size and the limits allow it."""
        authorize(request)
        value = await read_json(request.stream(), request.headers.get("content-length"), limits.max_body_bytes)
        limits.check(value)
        return value

    @app.exception_handler(HTTPError)
    async def refused(request: Request, exc: HTTPError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(error_body(str(exc)), status_code=exc.status, headers=headers)

    @app.exception_handler(RnnkitError)
    async def bad_request(request: Request, exc: RnnkitError) -> JSONResponse:
        return JSONResponse(error_body(str(exc)), status_code=422)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s %s failed", request.method, request.url.path)
        return JSONResponse(error_body(f"internal error ({type(exc).__name__}: {exc}); the server goes on"),
                            status_code=500)

    @app.get("/healthz", tags=["server"])
    async def healthz() -> dict[str, Any]:
        """Liveness, and the generations each model is running now."""
        return {"status": "ok", "models": len(models),
                "streams": {name: m.batcher.active for name, m in models.items()}}

    @app.get("/v1/models", tags=["models"])
    async def list_models(request: Request) -> dict[str, Any]:
        """Every loaded model: name, task, whether it streams, request and response schemas."""
        authorize(request)
        return {"models": [m.describe() for m in models.values()]}

    for served in models.values():  # one documented route per model, with its task's schemas
        add_model_routes(app, served, accept)

    @app.post("/v1/{name}/predict", tags=["models"], include_in_schema=False)
    @app.post("/v1/{name}/generate", tags=["models"], include_in_schema=False)
    async def unknown(name: str, request: Request) -> None:
        authorize(request)
        model(name)  # raises the 404

    mount_playground(app)
    return app


def add_model_routes(app: FastAPI, served: ServedModel, accept: Callable[[Request], Awaitable[Any]]) -> None:
    """``predict`` (and ``generate`` for a streaming task) of one model, documented with its schemas;
    ``accept`` checks the token and limits and returns the request's JSON."""
    task = type(served.task)
    body_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": task.request_schema}}}}

    async def predict(request: Request) -> Response:
        answer = await served.predictor.predict(await accept(request))
        return Response(dumps(answer), media_type="application/json")

    app.post(f"/v1/{served.name}/predict", tags=["models"], summary=f"{task.name}: predict",
             openapi_extra={**body_doc, "responses": {"200": {"content": {
                 "application/json": {"schema": task.response_schema}}}}})(predict)
    if not task.streams:
        async def no_stream(request: Request) -> None:
            await accept(request)
            raise HTTPError(404, f"the {task.name} model {served.name!r} does not stream; "
                                 f"POST /v1/{served.name}/predict instead")

        app.post(f"/v1/{served.name}/generate", include_in_schema=False)(no_stream)
        return

    async def generate(request: Request) -> StreamingResponse:
        pieces = await served.stream(await accept(request))  # a bad request raises here, before the stream starts
        return StreamingResponse(server_sent_events(pieces), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.post(f"/v1/{served.name}/generate", tags=["models"], summary=f"{task.name}: stream as server-sent events",
             openapi_extra={**body_doc, "responses": {"200": {"content": {"text/event-stream": {}}}}})(generate)


async def server_sent_events(pieces: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    """Each piece as ``data: <json>``, then ``event: done``; a failure as ``event: error`` with one line."""
    try:
        async for piece in pieces:
            yield f"data: {dumps(piece)}\n\n"
    except RnnkitError as exc:
        yield f"event: error\ndata: {dumps(error_body(str(exc)))}\n\n"
        return
    finally:
        await pieces.aclose()  # a client gone: the generation's slot is freed now, not at garbage collection
    yield "event: done\ndata: {}\n\n"


def mount_playground(app: FastAPI) -> None:
    """The web page at ``/`` and its files at ``/static``: plain HTML, JS and CSS, no build step."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html")


__all__ = ["ServedModel", "create_app", "load_models"]
