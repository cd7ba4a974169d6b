"""Concurrent requests to one model answered together: generations stepped as one batch per step
(one slot per client), predictions handed over in turns.

A generating task that sets ``batches_streams`` offers ``open_stream(request)`` (a slot holding
that request's own state, sampling options and length) and ``step_streams(slots)`` (every slot
one step, as one batch). The :class:`StreamBatcher` of a model keeps the slots of the clients
connected now and runs a loop on the event loop: while any slot is live, hand all of them to
``step_streams`` on the model's worker thread for a short slice of steps, then deliver each
slot's new pieces to its client's queue. A client takes what piled up in its queue as one piece
(``task.merge_pieces``): one event per slice, or per turn of a slow reader, not one per token.
Clients join between any two steps (a join ends the slice); a client that disconnects marks its
slot cancelled, and the next step leaves it out, so its row of the batch is freed at once.

Predict requests wait in the :class:`PredictBatcher` of their model: while the worker is busy
they queue, and each turn hands every waiting request to ``task.predict_many`` in one call, which
a task may answer with one batched forward. One client alone is answered at once; many clients
share forwards instead of queueing for one each, and a bad request is still refused on its own.

All model calls of one model (predict, opening a slot, stepping) run on that model's single
worker thread, one at a time: the event loop never blocks on the model, and the model never
runs two calls at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Optional

from ..tasks.base import StreamSlot, Task
from .limits import HTTPError

_END = None  # the queue item after a slot's last piece
SLICE_SECONDS = 0.025  # how long one turn of the streams' loop steps them before handing pieces over


class _Failure:
    """The queue item of a step that raised: the message the client is sent instead of more pieces."""

    def __init__(self, exc: Exception) -> None:
        self.message = " ".join(str(exc).split()) or type(exc).__name__


class _Client:
    """One connected stream: its slot and the queue its pieces wait in."""

    def __init__(self, slot: StreamSlot) -> None:
        self.slot, self.queue, self.cancelled = slot, asyncio.Queue(), False


class StreamBatcher:
    """Steps the live generations of one task together (see the module docstring)."""

    def __init__(self, task: Task, worker: ThreadPoolExecutor, max_streams: int) -> None:
        self.task, self.worker, self.max_streams = task, worker, max_streams
        self.clients: list[_Client] = []
        self.opening = 0  # slots being opened on the worker: they count against max_streams too
        self.batch_sizes: dict[int, int] = {}  # batch size -> steps taken at it, for /healthz and tests
        self._wake: Optional[asyncio.Event] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._runner: Optional[asyncio.Task] = None

    @property
    def active(self) -> int:
        """Streams generating now."""
        return self.opening + sum(not c.cancelled for c in self.clients)

    async def stream(self, request: Any) -> AsyncIterator[dict[str, Any]]:
        """Open a slot for ``request`` (errors raise here, before a byte is sent), then yield its pieces."""
        if self.active >= self.max_streams:
            raise HTTPError(429, f"{self.max_streams} generations are running on this model, its limit; "
                                 "retry when one has finished")
        self.opening += 1
        try:
            slot = await self.call(self.task.open_stream_checked, request)
        finally:
            self.opening -= 1
        return self._deliver(_Client(slot))

    async def _deliver(self, client: _Client) -> AsyncIterator[dict[str, Any]]:
        if client.slot.done:  # nothing to generate (e.g. max_tokens 0)
            return
        self._ensure_running()
        self.clients.append(client)
        self._wake.set()
        try:
            while True:
                items = [await client.queue.get()]
                while not client.queue.empty() and isinstance(items[-1], dict):  # the client fell behind
                    items.append(client.queue.get_nowait())
                pieces = [item for item in items if isinstance(item, dict)]
                for piece in self.task.merge_pieces(pieces) if len(pieces) > 1 else pieces:
                    yield piece
                if isinstance(items[-1], _Failure):
                    raise HTTPError(500, f"generation failed: {items[-1].message}")
                if items[-1] is _END:
                    return
        finally:  # finished, or the client went away (cancelled or closed mid-stream)
            client.cancelled = True

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(*args)`` on the model's worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, function, *args)

    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._runner is None or self._runner.done():
            # first stream on this event loop (a test client may start a new loop per test)
            self._loop, self._wake, self.clients = loop, asyncio.Event(), []
            self._runner = loop.create_task(self._run())

    async def _run(self) -> None:
        """Step every live slot as one batch until none is left, then sleep until one joins."""
        while True:
            self.clients = [c for c in self.clients if not c.cancelled]
            if not self.clients:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = list(self.clients)
            pieces, failure = await self.call(self._slice, batch)
            for client, new in zip(batch, pieces):
                for piece in new:
                    client.queue.put_nowait(piece)
                if failure is not None:  # a failing model ends these streams, not the server
                    client.queue.put_nowait(_Failure(failure))
                    client.cancelled = True
                elif client.slot.done:
                    client.queue.put_nowait(_END)
                    client.cancelled = True

    def _slice(self, batch: list[_Client]) -> tuple[list[list[dict[str, Any]]], Optional[Exception]]:
        """On the worker: step ``batch`` for up to ``SLICE_SECONDS``; each client's pieces, and what failed.

        Handing pieces to the event loop once per slice rather than once per step means one event
        (``task.merge_pieces``) and one write per client per slice, instead of one per token: the
        event loop, which shares the interpreter with the model, does far less per token. The slice
        ends early when a client joins (it waits at most one step) and leaves out a client that
        left, so slots are freed as promptly as before.
        """
        deadline = time.perf_counter() + SLICE_SECONDS
        pieces: list[list[dict[str, Any]]] = [[] for _ in batch]
        while True:
            live = [k for k, c in enumerate(batch) if not (c.cancelled or c.slot.done)]
            if not live:
                return pieces, None
            try:
                new = self.task.step_streams([batch[k].slot for k in live])
            except Exception as exc:
                return pieces, exc
            self.batch_sizes[len(live)] = self.batch_sizes.get(len(live), 0) + 1
            for k, more in zip(live, new):
                pieces[k] += more
            if time.perf_counter() >= deadline or len(self.clients) != len(batch):
                return pieces, None


class PredictBatcher:
    """Hands the predict requests waiting for one task to ``predict_many`` in turns (module docstring).

    A turn is taken on the worker thread when the worker gets to it, so it holds every request
    that arrived while the worker was busy (a deque: the event loop appends, the worker pops).
    """

    def __init__(self, task: Task, worker: ThreadPoolExecutor, most: int = 64) -> None:  # most: requests per turn
        self.task, self.worker, self.most = task, worker, most
        self.waiting: deque[tuple[Any, asyncio.Future]] = deque()
        self.turns: dict[int, int] = {}  # requests in a turn -> turns taken with that many, for tests
        self._wake: Optional[asyncio.Event] = None
        self._runner: Optional[asyncio.Task] = None

    async def predict(self, request: Any) -> Any:
        """The response to ``request``; raises what refused or failed it."""
        loop = asyncio.get_running_loop()
        if self._runner is None or self._runner.done() or self._runner.get_loop() is not loop:
            self.waiting, self._wake = deque(), asyncio.Event()  # first request on this event loop
            self._runner = loop.create_task(self._run())
        answer = loop.create_future()
        self.waiting.append((request, answer))
        self._wake.set()
        outcome = await answer
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _run(self) -> None:
        while True:
            if not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            for answer, outcome in await asyncio.get_running_loop().run_in_executor(self.worker, self._turn):
                if not answer.done():  # its client may have gone
                    answer.set_result(outcome)

    def _turn(self) -> list[tuple[asyncio.Future, Any]]:
        """On the worker: the requests waiting now, answered by one ``predict_many``."""
        turn = [self.waiting.popleft() for _ in range(min(self.most, len(self.waiting)))]
        try:
            outcomes = self.task.predict_many([request for request, _ in turn])
        except Exception as exc:  # predict_many itself broke: every request of the turn gets the error
            outcomes = [exc] * len(turn)
        self.turns[len(turn)] = self.turns.get(len(turn), 0) + 1
        return [(answer, outcome) for (_, answer), outcome in zip(turn, outcomes)]


__all__ = ["PredictBatcher", "StreamBatcher"]
