"""The /v1/ gateway end to end: the real ASGI app under uvicorn on loopback, the mock upstream,
and the official openai and anthropic SDKs as clients. After each scenario the ledger holds
exactly what the SDK responses reported, tokens and cost."""

import json
import logging
import math
import socket
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import anthropic
import openai
import pytest
from django.contrib.auth.models import User
from django.db.models import Sum

from gateway.mock_upstream import FAILURES, counts
from gateway.models import ApiKey, ModelFacade
from tests.support.servers import port_of
from usage.models import FiveMinuteUsage
from usage.pricing import Prices, cost_nanos
from usage.sql import COUNTERS

GPT = Prices(input_micros=150_000, cached_input_micros=75_000, output_micros=600_000)
SONNET = Prices(input_micros=3_000_000, cached_input_micros=300_000, cache_write_micros=3_750_000,
                output_micros=15_000_000)
EMBED = Prices(input_micros=20_000)
LONG_PROMPT = "Tell me about exact usage accounting. " * 8  # long enough for cached tokens


def facade(name, provider, base_url, upstream_model, prices, **extra):
    return ModelFacade.objects.create(
        name=name, provider=provider, base_url=base_url, upstream_model=upstream_model,
        input_price_micros=prices.input_micros, cached_input_price_micros=prices.cached_input_micros,
        cache_write_price_micros=prices.cache_write_micros, output_price_micros=prices.output_micros, **extra)


@pytest.fixture
def gw(transactional_db, gateway_server, mock_upstream):
    carol = User.objects.create_user("carol")
    _, key = ApiKey.objects.create_key(carol, name="tests")
    facade("gpt-test", "openai", f"{mock_upstream.url}/v1", "gpt-4o-mini", GPT)
    facade("embed-test", "openai", f"{mock_upstream.url}/v1", "text-embedding-3-small", EMBED, kind="embeddings")
    facade("claude-test", "anthropic", mock_upstream.url, "claude-sonnet-4-5", SONNET)
    for mode in FAILURES:
        facade(f"gpt-{mode}", "openai", f"{mock_upstream.url}/v1", mode, GPT)
        facade(f"claude-{mode}", "anthropic", mock_upstream.url, mode, SONNET)
    gateway_server.refresh()
    mock_upstream.mock.chunk_delay = 0
    clients = SimpleNamespace(
        user=carol, key=key, url=gateway_server.url, server=gateway_server, mock=mock_upstream.mock,
        mock_url=mock_upstream.url,
        openai=openai.OpenAI(base_url=f"{gateway_server.url}/v1", api_key=key, max_retries=0, timeout=20),
        anthropic=anthropic.Anthropic(base_url=gateway_server.url, api_key=key, max_retries=0, timeout=20),
    )
    yield clients
    clients.openai.close()
    clients.anthropic.close()


def ledger():
    sums = FiveMinuteUsage.objects.aggregate(**{name: Sum(name) for name in COUNTERS})
    return {name: value or 0 for name, value in sums.items()}


def expected(prices=GPT, requests=1, inp=0, cached=0, writes=0, out=0, errors=0, estimated=0, reasoning=0,
             extended=0, web=0, files=0):
    return {"requests": requests, "error_requests": errors, "estimated_requests": estimated, "input_tokens": inp,
            "cached_input_tokens": cached, "cache_write_tokens": writes, "cache_write_extended_tokens": extended,
            "output_tokens": out, "reasoning_tokens": reasoning, "web_search_calls": web, "file_search_calls": files,
            "cost_nanos": cost_nanos(prices, input_tokens=inp, cached_input_tokens=cached, cache_write_tokens=writes,
                                     cache_write_extended_tokens=extended, output_tokens=out, web_search_calls=web,
                                     file_search_calls=files)}


def openai_expected(usage):
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return expected(GPT, inp=usage.prompt_tokens, cached=cached, out=usage.completion_tokens)


def anthropic_expected(usage):
    cached, writes = usage.cache_read_input_tokens or 0, usage.cache_creation_input_tokens or 0
    return expected(SONNET, inp=usage.input_tokens + cached + writes, cached=cached, writes=writes,
                    out=usage.output_tokens)


def post(gw, path, body: bytes, headers=None):
    request = urllib.request.Request(f"{gw.url}{path}", data=body, method="POST", headers={
        "authorization": f"Bearer {gw.key}", "content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def chat(content=LONG_PROMPT):
    return [{"role": "user", "content": content}]


# --- OpenAI --------------------------------------------------------------------------------


def test_chat_completion_is_proxied_renamed_and_counted_exactly(gw):
    raw = gw.openai.chat.completions.with_raw_response.create(model="gpt-test", messages=chat())
    response = raw.parse()
    assert response.model == "gpt-test" and response.choices[0].message.content.startswith("Mock reply")
    assert response.usage.prompt_tokens_details.cached_tokens > 0
    assert ledger() == openai_expected(response.usage)
    nanos = ledger()["cost_nanos"]  # integer arithmetic: no float near money
    assert raw.headers["x-codevector-cost-usd"] == f"{nanos // 10**9}.{nanos % 10**9:09d}"
    assert raw.headers["x-codevector-request-id"].startswith("req_")
    assert gw.mock.seen[-1]["body"]["model"] == "gpt-4o-mini"


def test_the_gateway_counts_its_requests_in_progress_for_the_commit_spin(gw):
    """GatewayApp.requests_in_progress (read by the ledger's commit spin): one while a stream is
    open, none once answers and refusals are out."""
    gw.mock.chunk_delay = 0.2
    stream = gw.openai.chat.completions.create(model="gpt-test", messages=chat(), stream=True)
    chunks = iter(stream)
    next(chunks)
    during = gw.server.app.requests_in_progress
    rest = list(chunks)
    status, _, _ = post(gw, "/v1/chat/completions", b"{}", {"authorization": ""})
    # The client has its answer a moment before the server's handler returns.
    deadline = time.monotonic() + 5
    while gw.server.app.requests_in_progress and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (during, status, gw.server.app.requests_in_progress) == (1, 401, 0)
    assert rest and ledger()["requests"] == 1


def test_a_stream_without_include_usage_hides_the_usage_chunk_but_counts_it(gw):
    chunks = list(gw.openai.chat.completions.create(model="gpt-test", messages=chat(), stream=True))
    assert all(chunk.usage is None for chunk in chunks) and all(chunk.choices for chunk in chunks)
    assert {chunk.model for chunk in chunks} == {"gpt-test"}
    assert gw.mock.seen[-1]["body"]["stream_options"] == {"include_usage": True}
    prompt_tokens, completion_tokens, reply = counts(LONG_PROMPT, "gpt-4o-mini")
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply
    assert ledger() == expected(GPT, inp=prompt_tokens, cached=prompt_tokens // 2, out=completion_tokens)


def test_a_stream_with_include_usage_passes_the_usage_chunk_through(gw):
    chunks = list(gw.openai.chat.completions.create(model="gpt-test", messages=chat(), stream=True,
                                                    stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].model == "gpt-test"
    assert ledger() == openai_expected(chunks[-1].usage)


def test_embeddings_count_prompt_tokens_only(gw):
    response = gw.openai.embeddings.create(model="embed-test", input=["first text", "second, longer text"])
    assert len(response.data) == 2 and response.model == "embed-test"
    assert ledger() == expected(EMBED, inp=response.usage.prompt_tokens)


def test_models_list_in_both_shapes(gw):
    ids = [m.id for m in gw.openai.models.list()]
    assert "gpt-test" in ids and "claude-test" in ids and ids == sorted(ids)
    anthropic_ids = [m.id for m in gw.anthropic.models.list()]
    assert anthropic_ids == ids
    assert ledger()["requests"] == 0


# --- Anthropic -----------------------------------------------------------------------------


def test_anthropic_message_counts_cache_reads_and_writes(gw):
    response = gw.anthropic.messages.create(model="claude-test", max_tokens=100, messages=chat())
    assert response.model == "claude-test" and response.usage.cache_read_input_tokens > 0
    assert ledger() == anthropic_expected(response.usage)


def test_anthropic_stream_takes_the_latest_counts_never_the_sum(gw):
    with gw.anthropic.messages.stream(model="claude-test", max_tokens=100, messages=chat()) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith("Mock reply") and final.model == "claude-test"
    assert ledger() == anthropic_expected(final.usage)


# --- refusals: the caller's format, no usage recorded ----------------------------------------


def test_bad_keys_are_refused_in_each_format(gw):
    bad_openai = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="cvk_not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_openai.chat.completions.create(model="gpt-test", messages=chat())
    bad_anthropic = anthropic.Anthropic(base_url=gw.url, api_key="cvk_not-a-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad_anthropic.messages.create(model="claude-test", max_tokens=5, messages=chat())
    assert info.value.body["error"]["type"] == "authentication_error"
    status, _, body = post(gw, "/v1/chat/completions", b"{}", {"authorization": ""})
    assert status == 401 and json.loads(body)["error"]["code"] == "missing_api_key"
    assert ledger()["requests"] == 0


def test_revoked_expired_and_inactive_users_keys_are_refused(gw):
    from django.utils import timezone

    ApiKey.objects.update(revoked_at=timezone.now())
    gw.server.refresh()
    with pytest.raises(openai.AuthenticationError):
        gw.openai.chat.completions.create(model="gpt-test", messages=chat())
    ApiKey.objects.update(revoked_at=None)
    gw.user.is_active = False
    gw.user.save()
    gw.server.refresh()
    with pytest.raises(openai.AuthenticationError):
        gw.openai.chat.completions.create(model="gpt-test", messages=chat())


def test_a_new_key_works_at_once(gw):
    _, fresh = ApiKey.objects.create_key(gw.user)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=fresh, max_retries=0)
    assert client.chat.completions.create(model="gpt-test", messages=chat("hi")).model == "gpt-test"


def test_unknown_models_and_wrong_endpoints_are_refused(gw):
    with pytest.raises(openai.NotFoundError):
        gw.openai.chat.completions.create(model="no-such-model", messages=chat())
    with pytest.raises(anthropic.NotFoundError):
        gw.anthropic.messages.create(model="no-such-model", max_tokens=5, messages=chat())
    with pytest.raises(openai.BadRequestError, match="/v1/messages"):
        gw.openai.chat.completions.create(model="claude-test", messages=chat())
    with pytest.raises(anthropic.BadRequestError, match="/v1/chat/completions"):
        gw.anthropic.messages.create(model="gpt-test", max_tokens=5, messages=chat())
    ModelFacade.objects.filter(name="gpt-test").update(is_active=False)
    gw.server.refresh()
    with pytest.raises(openai.NotFoundError):
        gw.openai.chat.completions.create(model="gpt-test", messages=chat())
    assert ledger()["requests"] == 0


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not valid JSON"),
    (b'{"model": "gpt-test", "temperature": NaN, "messages": []}', "NaN"),
    (b'{"model": "gpt-test", "temperature": Infinity, "messages": []}', "Infinity"),
    (b'[{"model": "gpt-test"}]', "JSON object"),
    (b'{"model": 7, "messages": []}', "'model'"),
    (b'{"model": "gpt-test", "stream": "yes", "messages": []}', "'stream'"),
])
def test_malformed_bodies_get_a_400_in_the_callers_format(gw, body, message):
    status, headers, raw = post(gw, "/v1/chat/completions", body)
    error = json.loads(raw)["error"]
    assert status == 400 and message in error["message"] and error["type"] == "invalid_request_error"
    status, _, raw = post(gw, "/v1/messages", body, {"anthropic-version": "2023-06-01"})
    assert status == 400 and json.loads(raw)["type"] == "error"
    assert ledger()["requests"] == 0


def test_an_oversized_body_gets_a_413(gw, settings):
    settings.GATEWAY_MAX_BODY_BYTES = 2048
    with pytest.raises(openai.APIStatusError) as info:
        gw.openai.chat.completions.create(model="gpt-test", messages=chat("x" * 4000))
    assert info.value.status_code == 413
    assert ledger()["requests"] == 0


def test_a_chunked_body_is_read_whole_and_one_past_the_limit_gets_a_413(gw, settings):
    """Without Content-Length the body arrives in several messages: each is read, and the limit
    still holds."""
    import http.client

    settings.GATEWAY_MAX_BODY_BYTES = 2048
    host, port = gw.url.removeprefix("http://").split(":")

    def post_chunked(body: bytes):
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        pieces = [body[i:i + 100] for i in range(0, len(body), 100)]
        connection.request("POST", "/v1/chat/completions", body=iter(pieces), encode_chunked=True, headers={
            "authorization": f"Bearer {gw.key}", "content-type": "application/json", "transfer-encoding": "chunked"})
        response = connection.getresponse()
        answer = response.status, json.loads(response.read())
        connection.close()
        return answer

    status, answer = post_chunked(json.dumps({"model": "gpt-test", "messages": chat("hello " * 100)}).encode())
    assert status == 200 and answer["model"] == "gpt-test"
    status, answer = post_chunked(json.dumps({"model": "gpt-test", "messages": chat("x" * 4000)}).encode())
    assert status == 413 and answer["error"]["code"] == "request_too_large"
    assert ledger()["requests"] == 1


# --- upstream failures: recorded as errors ----------------------------------------------------


def test_upstream_error_statuses_pass_through_and_count_as_errors(gw):
    with pytest.raises(openai.InternalServerError) as info:
        gw.openai.chat.completions.create(model="gpt-fail-500", messages=chat())
    assert "Mock upstream error 500" in str(info.value)
    with pytest.raises(anthropic.RateLimitError):
        gw.anthropic.messages.create(model="claude-fail-429", max_tokens=5, messages=chat())
    assert ledger() == expected(requests=2, errors=2)


def test_an_upstream_timeout_is_a_504_and_an_error(gw, settings):
    settings.GATEWAY_READ_TIMEOUT = 0.5
    with pytest.raises(openai.InternalServerError) as info:
        gw.openai.chat.completions.create(model="gpt-fail-timeout", messages=chat())
    assert info.value.status_code == 504
    assert ledger() == expected(errors=1)


def test_a_refused_connection_is_a_502_and_an_error(gw):
    with socket.socket() as bound:  # bound, never listening: every connection to it is refused
        bound.bind(("127.0.0.1", 0))
        facade("gpt-nowhere", "openai", f"http://127.0.0.1:{port_of(bound)}/v1", "gpt-4o-mini", GPT)
        gw.server.refresh()
        with pytest.raises(openai.InternalServerError) as info:
            gw.openai.chat.completions.create(model="gpt-nowhere", messages=chat())
    assert info.value.status_code == 502
    assert ledger() == expected(errors=1)


def test_a_response_without_usage_is_estimated_at_four_characters_a_token(gw):
    response = gw.openai.chat.completions.create(model="gpt-no-usage", messages=chat())
    assert response.usage is None
    reply = response.choices[0].message.content
    assert ledger() == expected(inp=math.ceil(len(LONG_PROMPT) / 4), out=math.ceil(len(reply) / 4), estimated=1)


def test_a_stream_ending_in_an_error_event_is_an_error_counted_as_estimated(gw):
    with pytest.raises(openai.APIError):
        list(gw.openai.chat.completions.create(model="gpt-stream-error", messages=chat(), stream=True))
    with pytest.raises(anthropic.APIError):
        with gw.anthropic.messages.stream(model="claude-stream-error", max_tokens=5, messages=chat()) as stream:
            list(stream.text_stream)
    totals = ledger()
    assert (totals["requests"], totals["error_requests"], totals["estimated_requests"]) == (2, 2, 2)
    prompt_tokens = counts(LONG_PROMPT, "x")[0]  # the Anthropic message_start counts are kept exactly
    assert totals["input_tokens"] == math.ceil(len(LONG_PROMPT) / 4) + prompt_tokens


def test_an_upstream_dropping_mid_stream_is_an_error(gw):
    try:
        list(gw.openai.chat.completions.create(model="gpt-fail-drop", messages=chat(), stream=True))
    except openai.APIError:
        pass
    deadline = time.monotonic() + 10
    while ledger()["requests"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    totals = ledger()
    assert (totals["requests"], totals["error_requests"], totals["estimated_requests"]) == (1, 1, 1)


def test_a_caller_disconnecting_mid_stream_is_counted_not_as_an_error(gw):
    import http.client

    gw.mock.chunk_delay = 0.3
    host, port = gw.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("POST", "/v1/chat/completions", body=json.dumps(
        {"model": "gpt-test", "messages": chat(), "stream": True}), headers={
        "authorization": f"Bearer {gw.key}", "content-type": "application/json"})
    response = connection.getresponse()
    received = b""
    while received.count(b"data: ") < 3:  # the role chunk and two words
        received += response.read1(4096)
    assert response.status == 200
    response.close()  # the caller goes away mid-stream
    connection.close()
    deadline = time.monotonic() + 10
    while ledger()["requests"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    totals = ledger()
    assert (totals["requests"], totals["error_requests"], totals["estimated_requests"]) == (1, 0, 1)
    assert totals["input_tokens"] == math.ceil(len(LONG_PROMPT) / 4)
    assert 0 < totals["output_tokens"] < counts(LONG_PROMPT, "gpt-4o-mini")[1]


# --- what crosses the gateway ------------------------------------------------------------------


def test_only_allowlisted_headers_reach_the_upstream_and_the_facade_credential_replaces_the_callers(gw, monkeypatch):
    monkeypatch.setenv("CODEVECTOR_UPSTREAM_TEST_KEY", "sk-upstream-secret-123")
    ModelFacade.objects.filter(name="gpt-test").update(api_key_env="CODEVECTOR_UPSTREAM_TEST_KEY")
    gw.server.refresh()
    status, headers, _ = post(gw, "/v1/chat/completions", json.dumps({"model": "gpt-test", "messages": chat()}).encode(),
                              {"cookie": "session=canary-cookie", "x-forwarded-for": "203.0.113.9",
                               "proxy-authorization": "Basic canary", "x-canary": "canary-value",
                               "x-forwarded-host": "evil.example", "x-api-key": "canary-x-api-key"})
    assert status == 200
    seen = {k.lower(): v for k, v in gw.mock.seen[-1]["headers"].items()}
    assert seen["authorization"] == "Bearer sk-upstream-secret-123"
    for name in ("cookie", "x-forwarded-for", "proxy-authorization", "x-canary", "x-forwarded-host", "x-api-key"):
        assert name not in seen, name
    assert not any("canary" in value for value in seen.values())
    names = {k.lower(): v for k, v in headers.items()}
    assert "set-cookie" not in names
    # The upstream's rate-limit and processing headers reach the caller, names in lower case.
    assert (names["x-ratelimit-remaining-requests"], names["openai-processing-ms"]) == ("499", "7")


def test_a_callers_organization_and_project_never_reach_the_upstream_the_facades_do(gw):
    """Catches callers choosing which organization of the gateway's account pays (issue #27)."""
    canary = {"openai-organization": "org-caller-canary", "openai-project": "proj_caller_canary"}
    body = json.dumps({"model": "gpt-test", "messages": chat()}).encode()
    assert post(gw, "/v1/chat/completions", body, canary)[0] == 200
    seen = {k.lower(): v for k, v in gw.mock.seen[-1]["headers"].items()}
    assert "openai-organization" not in seen and "openai-project" not in seen
    ModelFacade.objects.filter(name="gpt-test").update(openai_organization="org-facade", openai_project="proj_facade")
    gw.server.refresh()
    assert post(gw, "/v1/chat/completions", body, canary)[0] == 200
    seen = {k.lower(): v for k, v in gw.mock.seen[-1]["headers"].items()}
    assert (seen["openai-organization"], seen["openai-project"]) == ("org-facade", "proj_facade")


def test_a_credential_variable_outside_the_allowlist_is_never_read_whatever_the_database_says(gw, monkeypatch):
    """Catches a facade that sends SECRET_KEY (or any variable) upstream as its credential (issue
    #27: an admin who may edit facades pointed one at a server of theirs and a variable of the
    gateway's). The row is written past the model's clean(), as an old row or raw SQL would be."""
    monkeypatch.setenv("SECRET_KEY_CANARY", "do-not-send-me")
    ModelFacade.objects.filter(name="gpt-test").update(api_key_env="SECRET_KEY_CANARY")
    gw.server.refresh()
    seen_before = len(gw.mock.seen)
    status, _, body = post(gw, "/v1/chat/completions", json.dumps({"model": "gpt-test", "messages": chat()}).encode())
    assert status == 502 and json.loads(body)["error"]["code"] == "upstream_credential_refused"
    assert "gpt-test" in json.loads(body)["error"]["message"] and b"do-not-send-me" not in body
    assert len(gw.mock.seen) == seen_before and ledger()["requests"] == 0


def test_an_upstream_count_past_64_bits_is_estimated_and_the_requests_beside_it_are_counted_exactly(gw, caplog):
    """Catches trusting an upstream's token counts without bound (issue #27: prompt_tokens 2**63+7
    failed a whole SQLite batch, 15 other users' answered requests got 500 and were never counted)."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(model):
        return post(gw, "/v1/chat/completions", json.dumps({"model": model, "messages": chat("Hi")}).encode())

    with caplog.at_level(logging.WARNING, logger="codevector.gateway"), ThreadPoolExecutor(21) as pool:
        answers = list(pool.map(ask, ["gpt-huge-usage"] + ["gpt-test"] * 20))
    assert [status for status, _, _ in answers] == [200] * 21
    fine = json.loads(answers[1][2])["usage"]
    assert (fine["prompt_tokens"], fine["completion_tokens"]) == (11, 8)  # the mock's counts for "Hi"
    reply = json.loads(answers[0][2])["choices"][0]["message"]["content"]
    huge = {"input_tokens": 1, "output_tokens": math.ceil(len(reply) / 4)}  # "Hi": 2 characters, 1 token
    assert ledger() == {**expected(GPT, requests=21, inp=20 * 11 + huge["input_tokens"],
                                   out=20 * 8 + huge["output_tokens"], estimated=1),
                        "cost_nanos": 20 * cost_nanos(GPT, input_tokens=11, cached_input_tokens=0, cache_write_tokens=0,
                                                      output_tokens=8)
                        + cost_nanos(GPT, input_tokens=1, cached_input_tokens=0, cache_write_tokens=0,
                                     output_tokens=huge["output_tokens"])}
    assert "facade gpt-huge-usage: the upstream reported prompt_tokens = 9223372036854775815" in caplog.text


def test_an_anthropic_stream_past_64_bits_is_estimated(gw):
    with gw.anthropic.messages.stream(model="claude-huge-usage", max_tokens=64, messages=chat("Hi")) as stream:
        text = "".join(stream.text_stream)
    totals = ledger()
    assert (totals["requests"], totals["estimated_requests"], totals["error_requests"]) == (1, 1, 0)
    assert (totals["input_tokens"], totals["output_tokens"]) == (1, math.ceil(len(text) / 4))


class CannedUpstream:
    """A raw HTTP/1.1 server on loopback that answers every request with the same bytes: what a
    broken or hostile upstream would send."""

    def __init__(self, answer: bytes):
        import threading

        self.answer, self.sock = answer, socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                try:
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


MEBIBYTE_CHUNK = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"  # one chunk of 1 MiB (chunked encoding)


@pytest.mark.parametrize("answer", [
    # Declares 64 MiB + 1 (GATEWAY_MAX_RESPONSE_BYTES is 64 MiB): refused before its body is read.
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 67108865\r\n\r\n{}",
    # Says nothing of its size and sends 70 MiB: refused once past the bound.
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    + MEBIBYTE_CHUNK * 70,
], ids=["declared", "chunked"])
def test_a_whole_answer_past_the_size_bound_is_a_502_counted_and_estimated(gw, answer):
    upstream = CannedUpstream(answer)
    try:
        facade("gpt-big", "openai", f"{upstream.url}/v1", "big", GPT)
        gw.server.refresh()
        status, _, body = post(gw, "/v1/chat/completions",
                               json.dumps({"model": "gpt-big", "messages": chat("x" * 400)}).encode())
    finally:
        upstream.close()
    assert status == 502 and json.loads(body)["error"]["code"] == "upstream_response_too_large"
    assert ledger() == expected(GPT, inp=100, errors=1, estimated=1)  # 400 characters: 100 tokens


def test_a_full_pool_is_a_502_that_says_so_within_the_connect_timeout_and_is_counted(gw, settings):
    """One origin at its cap (a hung upstream holds its only connection): the next request waits
    no longer than the connect timeout, and its 502 says the pool was full."""
    import threading

    hung = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    held = None
    url = f"http://127.0.0.1:{hung.getsockname()[1]}"
    settings.GATEWAY_CONNECT_TIMEOUT, settings.GATEWAY_READ_TIMEOUT = 0.5, 3
    client = gw.server.app.upstream
    cap, client.max_connections_per_origin = client.max_connections_per_origin, 1
    try:
        facade("gpt-hung", "openai", f"{url}/v1", "hung", GPT)
        gw.server.refresh()
        body = json.dumps({"model": "gpt-hung", "messages": chat("Hi")}).encode()
        first = threading.Thread(target=post, args=(gw, "/v1/chat/completions", body))
        first.start()
        # The first request holds the origin's one connection, waiting for an answer: the hung
        # server takes that connection and reads the request's head, then answers nothing.
        hung.settimeout(10)
        held, _ = hung.accept()
        head = b""
        while b"\r\n\r\n" not in head:
            head += held.recv(65536)
        started = time.monotonic()
        status, _, answer = post(gw, "/v1/chat/completions", body)
        waited = time.monotonic() - started
        first.join(10)
    finally:
        client.max_connections_per_origin = cap
        if held is not None:
            held.close()
        hung.close()
    assert status == 502 and "UpstreamPoolFull" in json.loads(answer)["error"]["message"]
    assert "in use" in json.loads(answer)["error"]["message"]
    assert 0.4 < waited < 1.5  # the connect timeout (0.5 s) and a margin, not the read timeout
    assert (ledger()["requests"], ledger()["error_requests"]) == (2, 2)  # the 502 and the first one's 504


def test_a_stream_line_past_a_mebibyte_ends_the_request_counted_and_estimated(gw):
    line = b"data: " + b"x" * (1024 * 1024 + 1)  # no line break, ever
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(line))
    upstream = CannedUpstream(head + line)
    try:
        facade("gpt-endless", "openai", f"{upstream.url}/v1", "endless", GPT)
        gw.server.refresh()
        with pytest.raises(openai.APIError):
            list(gw.openai.chat.completions.create(model="gpt-endless", messages=chat("x" * 400), stream=True))
    finally:
        upstream.close()
    deadline = time.monotonic() + 5
    while ledger()["requests"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ledger() == expected(GPT, inp=100, errors=1, estimated=1)


def test_an_unset_upstream_credential_is_a_502_without_forwarding(gw, monkeypatch):
    monkeypatch.delenv("CODEVECTOR_UPSTREAM_MISSING_KEY", raising=False)
    ModelFacade.objects.filter(name="gpt-test").update(api_key_env="CODEVECTOR_UPSTREAM_MISSING_KEY")
    gw.server.refresh()
    seen_before = len(gw.mock.seen)
    with pytest.raises(openai.InternalServerError, match="credential"):
        gw.openai.chat.completions.create(model="gpt-test", messages=chat())
    assert len(gw.mock.seen) == seen_before and ledger()["requests"] == 0


def test_no_key_appears_in_any_log_line(gw, caplog, monkeypatch):
    monkeypatch.setenv("CODEVECTOR_UPSTREAM_TEST_KEY", "sk-upstream-secret-456")
    ModelFacade.objects.filter(name="gpt-test").update(api_key_env="CODEVECTOR_UPSTREAM_TEST_KEY")
    gw.server.refresh()
    with caplog.at_level(logging.DEBUG):
        gw.openai.chat.completions.create(model="gpt-test", messages=chat())
        list(gw.openai.chat.completions.create(model="gpt-test", messages=chat(), stream=True))
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key + "x", max_retries=0).models.list()
        deadline = time.monotonic() + 5  # the stream's line is written once its last byte is out
        while sum('"event":"request"' in r.getMessage() for r in caplog.records) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = [record.getMessage() for record in caplog.records]
    request_lines = [json.loads(line) for line in lines if line.startswith('{"event":"request"')]
    assert len(request_lines) == 3 and request_lines[0]["key_prefix"] == gw.key[:12]
    secret_part = gw.key[12:]
    for line in lines:
        assert secret_part not in line and "sk-upstream-secret-456" not in line


def test_random_keys_cannot_flood_the_database_with_lookups(gw, settings):
    """Each unknown key costs a database look-up only within GATEWAY_KEY_LOOKUPS_PER_SECOND."""
    from gateway.keys import KeyCache

    settings.GATEWAY_KEY_LOOKUPS_PER_SECOND = 5
    cache = KeyCache()
    cache.replace({})
    time.sleep(1.1)  # the bucket fills to one second's worth
    asks = [cache.find(f"cvk_random-{i}")[2] for i in range(50)]
    assert sum(asks) == 5
    _, fresh = ApiKey.objects.create_key(gw.user)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=fresh, max_retries=0)
    assert client.models.list().data  # a real new key still gets through the gateway's own bucket


def test_a_started_gateway_freezes_its_startup_objects_and_collects_young_objects_less_often(gw):
    """gateway.app.tune_gc, run once the gateway has started (here under uvicorn's lifespan)."""
    import gc

    from gateway.app import GC_THRESHOLDS

    assert gc.get_threshold() == GC_THRESHOLDS == (10_000, 20, 100)
    assert gc.get_freeze_count() > 10_000  # Django, the gateway and their modules: not walked again
