"""What one request may ask of the server, and reading a request body within it.

Every refusal is an :class:`HTTPError`: a status and one line saying what is wrong and how to
fix it, sent as ``{"error": "..."}``. The limits are generic: they read the request as JSON,
not as any one task, so a task added later is bounded the same way without server code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator

from ..errors import RnnkitError
from ..tasks.schema import loads_request


class HTTPError(RnnkitError):
    """A refused request: an HTTP ``status`` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Bounds on one request, so no client can make the server run out of memory or time."""

    max_body_bytes: int = 1 << 20   # a request is a few texts or a series, never megabytes
    max_tokens: int = 2000          # tokens one generation may ask for ("max_tokens")
    max_horizon: int = 1000         # steps one forecast may ask for ("horizon")
    max_bars: int = 256             # bars one piece of music may ask for ("bars"): a few minutes of music
    max_batch: int = 256            # items in any one array of a request (texts, series, ...)
    max_streams: int = 64           # generations one model runs at once; one more is refused with 429

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RnnkitError(f"the server limit {name} must be a positive integer, got {value!r}")

    def check(self, request: Any) -> None:
        """Raise a 422 :class:`HTTPError` when ``request`` asks for more than these limits allow."""
        if not isinstance(request, dict):
            return  # the task's schema check names the wrong type
        for key, limit in (("max_tokens", self.max_tokens), ("horizon", self.max_horizon), ("bars", self.max_bars)):
            value = request.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > limit:
                raise HTTPError(422, f"request.{key} is {value}, above this server's limit of {limit}; "
                                     f"ask for at most {limit}")
        for key, value in request.items():
            if isinstance(value, list) and len(value) > self.max_batch:
                raise HTTPError(422, f"request.{key} has {len(value)} items, above this server's limit of "
                                     f"{self.max_batch}; split it into several requests")


async def read_json(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> Any:
    """The JSON document of a request body, read in ``chunks`` and refused (413) past ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before anything is read; a body sent
    without one (chunked) is counted as it arrives, so neither way can fill the memory.
    """
    too_large = f"the request body is over this server's limit of {limit} bytes; send a smaller request"
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise HTTPError(413, too_large)
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise HTTPError(413, too_large)
    try:
        return loads_request(bytes(body))
    except RnnkitError as exc:
        raise HTTPError(422, str(exc)) from None


def error_body(message: str) -> dict[str, str]:
    """The JSON of every refusal: one line."""
    return {"error": " ".join(message.split())}


__all__ = ["HTTPError", "Limits", "error_body", "read_json"]
