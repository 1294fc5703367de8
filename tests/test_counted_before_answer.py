"""The README's first guarantee, "Counted before the answer ends": a request's delta is committed
before the last bytes of its response are sent, so a client that received a whole answer was
counted.

The real gateway (gunicorn, one worker) on loopback, on the test's PostgreSQL database behind the
proxy of tests/support/pg_proxy.py in its "delay_commit" mode: the ledger's COMMIT is held on its
way to the server for as long as the test says. Meanwhile the client, on a raw socket, must not
have the last byte of a whole answer, nor the end of a stream (neither `[DONE]`, `message_stop` nor
the last chunk); once the COMMIT goes on, the answer ends and the ledger holds exactly what the
client was told.

Break caught: the pipeline recording usage after the answer ends (gateway/pipeline.py: `respond`
before `record` in `whole_response`, or the last event sent before `record` in
`streamed_response`): the client then has its whole answer while the COMMIT is still held.
"""

import json
import select
import socket
import time

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Sum

from gateway.models import ApiKey, ModelFacade
from tests.support.pg_proxy import PgProxy
from tests.support.servers import start_gateway, start_mock_upstream
from usage.models import FiveMinuteUsage

pytestmark = [pytest.mark.postgres_only, pytest.mark.xdist_group("faults")]

# How long the COMMIT is held once it is on its way, and so how long the gateway had to let the
# end of the answer out if it did not wait for it. The store waits far longer (USAGE_DB_TIMEOUT).
HOLD_SECONDS = 1.0


class Exchange:
    """One request on a connection of its own (`connection: close`), its answer read byte by byte
    as it arrives, so the test sees exactly how much of it the client has at any moment."""

    def __init__(self, base_url: str, path: str, body: dict, headers: dict):
        port = int(base_url.rsplit(":", 1)[1])
        payload = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\nconnection: close\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n")
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(head.encode() + payload)
        self.data = b""
        self.closed = False

    def read_for(self, seconds: float) -> None:
        """Take whatever arrives within `seconds` (less if the server closes)."""
        deadline = time.monotonic() + seconds
        while not self.closed and (left := deadline - time.monotonic()) > 0:
            if select.select([self.sock], [], [], left)[0]:
                chunk = self.sock.recv(65536)
                self.closed = not chunk
                self.data += chunk

    def read_to_the_end(self, seconds: float = 15.0) -> None:
        deadline = time.monotonic() + seconds
        while not self.answer()[3] and not self.closed and time.monotonic() < deadline:
            self.read_for(0.05)

    def answer(self) -> tuple[int | None, dict, bytes, bool]:
        """(status, headers, the body so far with chunked framing removed, whether its last byte is in)."""
        head, found, rest = self.data.partition(b"\r\n\r\n")
        if not found:
            return None, {}, b"", False
        status_line, *lines = head.split(b"\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines)}
        if b"content-length" in headers:
            length = int(headers[b"content-length"])
            return int(status_line.split()[1]), headers, rest[:length], len(rest) >= length
        assert headers.get(b"transfer-encoding") == b"chunked", headers
        body, position = b"", 0
        while (end := rest.find(b"\r\n", position)) >= 0:
            size = int(rest[position:end].split(b";")[0], 16)
            if size == 0:  # the last chunk: the answer ends with the blank line after it
                return int(status_line.split()[1]), headers, body, rest[end + 2:end + 4] == b"\r\n"
            body += rest[end + 2:end + 2 + size]
            if len(rest) < end + 2 + size + 2:
                break
            position = end + 2 + size + 2
        return int(status_line.split()[1]), headers, body, False

    def close(self) -> None:
        self.sock.close()


def ledger() -> tuple[int, int]:
    """(requests, output tokens) over the whole ledger, read directly (not through the proxy)."""
    sums = FiveMinuteUsage.objects.aggregate(requests=Sum("requests"), output=Sum("output_tokens"))
    return sums["requests"] or 0, sums["output"] or 0


def is_ledger_write(message: bytes) -> bool:
    """The ledger's UPSERT into the 5-minute table, prepared or as text (usage.ledger)."""
    return b"codevector_add_5min" in message or b"usage_bucket_5min" in message


def wait_until(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.01)


def output_tokens(provider: str, stream: bool, body: bytes) -> int:
    if not stream:
        usage = json.loads(body)["usage"]
        return usage["completion_tokens"] if provider == "openai" else usage["output_tokens"]
    events = [json.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")]
    if provider == "openai":
        return next(e["usage"]["completion_tokens"] for e in reversed(events) if e.get("usage"))
    return next(e["usage"]["output_tokens"] for e in reversed(events) if e.get("type") == "message_delta")


def end_of(provider: str, stream: bool) -> bytes | None:
    """The event that ends a stream (None for a whole answer: its end is its last byte)."""
    if not stream:
        return None
    return b"data: [DONE]" if provider == "openai" else b"event: message_stop"


CASES = [  # (provider, path, stream)
    ("openai", "/v1/chat/completions", False),
    ("openai", "/v1/chat/completions", True),
    ("anthropic", "/v1/messages", False),
    ("anthropic", "/v1/messages", True),
]


def request_body(provider: str, stream: bool, index: int) -> dict:
    prompt = f"held {index} one two three four five six seven"
    if provider == "openai":
        body = {"model": "gpt-held", "messages": [{"role": "user", "content": prompt}]}
        return body | ({"stream": True, "stream_options": {"include_usage": True}} if stream else {})
    return {"model": "claude-held", "max_tokens": 100, "messages": [{"role": "user", "content": prompt}],
            "stream": stream}


def test_no_client_has_the_end_of_its_answer_before_the_ledgers_commit_is_released(test_database_url, tmp_path):
    user = User.objects.create_user("hilda")
    _, key = ApiKey.objects.create_key(user, name="held")
    mock, mock_url = start_mock_upstream(tmp_path, "--stream-chunk-delay-ms", "10")
    ModelFacade.objects.create(name="gpt-held", provider="openai", base_url=f"{mock_url}/v1", upstream_model="gpt-h",
                               input_price_micros=150_000, output_price_micros=600_000)
    ModelFacade.objects.create(name="claude-held", provider="anthropic", base_url=mock_url,
                               upstream_model="claude-h", input_price_micros=3_000_000,
                               output_price_micros=15_000_000)
    port = int(connection.settings_dict["PORT"] or 5432)
    proxy = PgProxy(connection.settings_dict["HOST"] or "127.0.0.1", port)
    gateway, base_url = start_gateway(test_database_url.replace(f":{port}/", f":{proxy.port}/"), tmp_path, env={
        "USAGE_DB_TIMEOUT_SECONDS": "30", "GATEWAY_CACHE_SECONDS": "30"})
    headers = {"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
    try:
        # A first request, nothing held: the pool's connection is open and its statements prepared.
        warm = Exchange(base_url, "/v1/chat/completions", request_body("openai", False, 0), headers)
        warm.read_to_the_end()
        status, _, body, complete = warm.answer()
        assert (status, complete) == (200, True), warm.data[:500]
        counted = (1, output_tokens("openai", False, body))
        wait_until(lambda: ledger() == counted, 10, "the first request's delta")

        for index, (provider, path, stream) in enumerate(CASES, start=1):
            proxy.delayed.clear()
            proxy.set_mode("delay_commit")
            exchange = Exchange(base_url, path, request_body(provider, stream, index), headers)
            try:
                wait_until(lambda: any(is_ledger_write(m) for m in proxy.delayed), 15,
                           f"the ledger's COMMIT for {provider} stream={stream}")
                exchange.read_for(HOLD_SECONDS)  # the gateway's chance to end the answer early
                status, _, body, complete = exchange.answer()
                what = f"{provider} stream={stream}: {exchange.data[-300:]!r}"
                assert not complete and not exchange.closed, f"the answer ended before its commit: {what}"
                if stream:
                    # The stream was flowing (its head and first events are out); only its end waits.
                    assert status == 200 and b"data: " in body, what
                    assert end_of(provider, stream) not in body, what
                assert ledger() == counted  # the write really is the one held

                proxy.set_mode("up")  # the COMMIT goes on
                exchange.read_to_the_end()
                status, _, body, complete = exchange.answer()
                assert (status, complete) == (200, True), exchange.data[-500:]
                if stream:
                    assert end_of(provider, stream) in body
                counted = (counted[0] + 1, counted[1] + output_tokens(provider, stream, body))
                # Counted when the answer ended: no wait needed to see it.
                assert ledger() == counted
            finally:
                exchange.close()
                proxy.set_mode("up")
    finally:
        gateway.stop()
        proxy.close()
        mock.stop()
    assert ledger() == counted
