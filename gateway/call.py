"""One request on its way through the gateway (`Call`), the answers the gateway gives itself
(`Refusal`), request ids, and the request's log line."""

import itertools
import logging
import secrets
from time import monotonic

import orjson

from gateway.catalog import FacadeInfo
from gateway.keys import KeyInfo
from gateway.providers import Usage, openai
from usage.money import usd_exact

logger = logging.getLogger("codevector.gateway")


class RequestIds:
    """Request ids, which are also the ledger's exactly-once delta ids across hosts and restarts: a
    random 64-bit prefix per process (drawn anew in each worker, after the fork) and a counter.
    Cheaper than a uuid4 each, as unique."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._prefix = "req_" + secrets.token_hex(8)
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter):012x}"


request_ids = RequestIds()


class Refusal(Exception):
    """A request the gateway answers itself, before forwarding: nothing is recorded."""

    def __init__(self, status: int, message: str, *, type: str | None = None, code: str | None = None,
                 param: str | None = None, headers: list | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or []


class Call:
    """One request on its way through the gateway (a plain class with slots: one is made per request)."""

    __slots__ = ("scope", "receive", "send", "protocol", "request_id", "started", "key", "facade", "status", "usage",
                 "cost", "extra_headers", "_headers")

    def __init__(self, scope: dict, receive, send, protocol=openai):
        self.scope, self.receive, self.send, self.protocol = scope, receive, send, protocol
        self.request_id: str = request_ids.new()
        self.started: float = monotonic()
        self.key: KeyInfo | None = None
        self.facade: FacadeInfo | None = None
        self.status = 0
        self.usage: Usage | None = None
        self.cost: int | None = None
        self.extra_headers: list[tuple[bytes, bytes]] = []
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The request's headers by name (ASGI servers give the names in lower case)."""
        if self._headers is None:
            self._headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.scope["headers"]}
        return self._headers

    def response_headers(self, content_type: bytes) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", content_type), (b"x-codevector-request-id", self.request_id.encode())]
        if self.cost is not None:
            headers.append((b"x-codevector-cost-usd", usd_exact(self.cost).encode()))
        return headers + self.extra_headers

    async def respond(self, status: int, body: bytes, headers: list | None = None,
                      content_type: bytes = b"application/json") -> None:
        """A whole answer, with its Content-Length (no chunked encoding)."""
        self.status = status
        await self.send({"type": "http.response.start", "status": status,
                         "headers": [*self.response_headers(content_type), *(headers or []),
                                     (b"content-length", str(len(body)).encode())]})
        await self.send({"type": "http.response.body", "body": body})

    async def refuse(self, refusal: Refusal) -> None:
        await self.respond(refusal.status, self.protocol.error_body(
            refusal.status, refusal.message, type=refusal.type, code=refusal.code, param=refusal.param),
            refusal.headers)

    def log(self) -> None:
        """One JSON line per request, built only when the logger would write it (never a key)."""
        if not logger.isEnabledFor(logging.INFO):
            return
        usage = self.usage or Usage()
        # The caller's address: behind a trusted proxy, the one it forwarded (uvicorn's proxy headers).
        client = self.scope.get("client")
        logger.info(orjson.dumps({
            "event": "request", "request_id": self.request_id, "method": self.scope.get("method"),
            "path": self.scope.get("path"), "client": client[0] if client else None, "status": self.status,
            "user": self.key.username if self.key else None, "key_prefix": self.key.prefix if self.key else None,
            "facade": self.facade.name if self.facade else None, "input_tokens": usage.input_tokens,
            "cached_input_tokens": usage.cached_input_tokens, "cache_write_tokens": usage.cache_write_tokens,
            "output_tokens": usage.output_tokens, "reasoning_tokens": usage.reasoning_tokens, "estimated": usage.estimated,
            "cost_usd": usd_exact(self.cost) if self.cost is not None else None,
            "latency_ms": round((monotonic() - self.started) * 1000, 2),
        }).decode())
