"""Concurrent requests to one model answered together: generations stepped as one batch per step
(one slot per client), predictions handed over in turns.

A generating task that sets ``batches_streams`` offers ``open_stream(request)`` (a slot holding
that request's own state, sampling options and length) and ``step_streams(slots)`` (every slot
one step, as one batch). The :class:`StreamBatcher` of a model keeps the slots of the clients
connected now and runs a loop on the event loop: while any slot is live, hand all of them to
``step_streams`` on the model's worker thread, then deliver each slot's new pieces to its
client's queue. Clients join and leave between any two steps; a client that disconnects marks
its slot cancelled, and the next step leaves it out, so its row of the batch is freed at once.

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
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Optional

from ..tasks.base import StreamSlot, Task
from .limits import HTTPError

_END = None  # the queue item after a slot's last piece


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
            while (item := await client.queue.get()) is not _END:
                if isinstance(item, _Failure):
                    raise HTTPError(500, f"generation failed: {item.message}")
                yield item
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
            try:
                pieces = await self.call(self.task.step_streams, [c.slot for c in batch])
            except Exception as exc:  # a failing model ends these streams, not the server
                for client in batch:
                    client.queue.put_nowait(_Failure(exc))
                    client.cancelled = True
                continue
            self.batch_sizes[len(batch)] = self.batch_sizes.get(len(batch), 0) + 1
            for client, new in zip(batch, pieces):
                for piece in new:
                    client.queue.put_nowait(piece)
                if client.slot.done:
                    client.queue.put_nowait(_END)
                    client.cancelled = True


class PredictBatcher:
    """Hands the predict requests waiting for one task to ``predict_many`` in turns (module docstring).

    A turn is taken on the worker thread when the worker gets to it, so it holds every request
    that arrived while the worker was busy (a deque: the event loop appends, the worker pops).
    """

    def __init__(self, task: Task, worker: ThreadPoolExecutor, most: int = 64) -> None:
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
