"""A facade's own upstream proxy, CA bundle and client certificate (issue #29): the model's rules,
the catalog's Transport, gateway.http_client's pools kept apart by transport, and the gateway
answering 502 when a facade's file cannot be loaded. The test CA, mTLS upstreams and tinyproxy come
from tests/test_http_client_proxy.py (under CI=true a missing tinyproxy fails, never skips). The
client's tests touch no database and are marked dbless one by one; the model, catalog and gateway
tests use the database."""

import json
import urllib.error
import urllib.request

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError

import gateway.http_client.tls
from gateway.catalog import load_facades, transport
from gateway.http_client import (
    DIRECT,
    Transport,
    UpstreamError,
    UpstreamSettingUnusable,
    UpstreamUnreachable,
    redact_proxy_url,
)
from gateway.models import ApiKey, ModelFacade
from tests.test_http_client import Upstream, answer, answering, client, scenario, within
from tests.test_http_client_proxy import (  # noqa: F401 (pki and tinyproxy are fixtures)
    PASSWORD,
    USER,
    assert_no_credentials,
    pki,
    server_context,
    tinyproxy,
)
from usage.models import FiveMinuteUsage

dbless = pytest.mark.dbless
SOMEONE = "proxy-user"  # a proxy user name no message may show


async def body_of(http, url: str, own: Transport | None = None) -> bytes:
    response = await within(http.post(url, b"{}", {}, transport=own))
    data = await within(response.read())
    response.release()
    return data


def own_certificate(pki) -> Transport:
    cert, key = pki["client"]
    return Transport(client_cert=cert, client_key=key)


# --- mTLS and CA bundles per facade ---


@dbless
@scenario
async def test_an_mtls_upstream_refuses_a_facade_without_a_certificate_and_accepts_one_that_names_its_own(pki):
    async with Upstream(answering(answer(b"mutual")), ssl_context=server_context(pki, True)) as upstream:
        async with client(ca_bundle=pki["ca"]) as http:  # the gateway trusts the CA, presents no certificate
            with pytest.raises(UpstreamError):
                await body_of(http, upstream.url(scheme="https"))
            assert upstream.requests == []
            # The facade names only its certificate and key: the CA bundle is still the gateway's.
            assert await body_of(http, upstream.url(scheme="https"), own_certificate(pki)) == b"mutual"
            assert len(upstream.requests) == 1


@dbless
@scenario
async def test_a_facade_with_its_own_ca_reaches_its_upstream_and_a_facade_without_it_is_refused(pki):
    async with Upstream(answering(answer(b"private")), ssl_context=server_context(pki)) as upstream:
        async with client() as http:
            assert await body_of(http, upstream.url(scheme="https"), Transport(ca_bundle=pki["ca"])) == b"private"
            for other in (None, Transport(proxy=DIRECT)):  # another facade, with or without a transport of its own
                with pytest.raises(UpstreamUnreachable) as caught:  # the pipeline's 502
                    await within(http.post(upstream.url(scheme="https"), b"{}", {}, transport=other))
                assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
            assert len(upstream.requests) == 1


@dbless
@scenario
async def test_connections_made_for_one_facade_are_never_reused_for_another(pki):
    async with Upstream(answering(answer(b"ok")), ssl_context=server_context(pki)) as upstream:
        async with client(ca_bundle=pki["ca"]) as http:
            mine = own_certificate(pki)
            for own in (None, mine, None, mine, Transport(client_cert=mine.client_cert, client_key=mine.client_key)):
                assert await body_of(http, upstream.url(scheme="https"), own) == b"ok"
            # One kept-alive connection each: the default's two requests on one, the facade's three
            # (equal transports are one pool) on the other, never one connection for both.
            assert sorted(len(conn.requests) for conn in upstream.conns) == [2, 3]
            assert http.idle_connections() == 2


@dbless
@scenario
async def test_a_facades_tls_context_is_built_once_for_its_files(pki, monkeypatch):
    built = []
    real = gateway.http_client.tls.tls_context
    monkeypatch.setattr(gateway.http_client.tls, "tls_context", lambda *a, **kw: built.append(a) or real(*a, **kw))
    async with Upstream(answering(answer(b"ok", "Connection: close"))) as plain:
        async with Upstream(answering(answer(b"ok", "Connection: close")),
                            ssl_context=server_context(pki)) as upstream:
            async with client() as http:
                for own in (Transport(ca_bundle=pki["ca"]), Transport(proxy=DIRECT, ca_bundle=pki["ca"])) * 2:
                    assert await body_of(http, upstream.url(scheme="https"), own) == b"ok"
                    assert await body_of(http, plain.url(), own) == b"ok"  # plain http needs no context
                assert upstream.connections == 4  # each answer closed its connection: four handshakes
    assert built == [(pki["ca"], "", "")]  # one context for both transports (same files), built once


@dbless
@scenario
async def test_a_file_that_cannot_be_loaded_names_the_facades_setting_and_never_its_contents(pki, tmp_path):
    secret = tmp_path / "not-a-certificate.pem"
    secret.write_text("TOP-SECRET-CONTENTS\n")
    async with Upstream(answering(answer(b"ok")), ssl_context=server_context(pki)) as upstream:
        async with client(max_connections=1, ca_bundle=pki["ca"]) as http:
            cases = [
                (Transport(ca_bundle=str(tmp_path / "missing.pem")),
                 f"the facade's upstream_ca_bundle ({tmp_path / 'missing.pem'}) could not be loaded: "
                 "No such file or directory"),
                (Transport(client_cert=str(secret)), f"the facade's upstream_client_cert ({secret}) could not be loaded"),
                (Transport(client_cert=pki["client"][0], client_key=str(secret)),
                 f"the facade's upstream_client_key ({secret}) could not be loaded"),
            ]
            for own, message in cases:
                with pytest.raises(UpstreamSettingUnusable) as caught:
                    await within(http.post(upstream.url(scheme="https"), b"{}", {}, transport=own))
                assert isinstance(caught.value, UpstreamUnreachable)  # the pipeline's 502
                assert message in str(caught.value)
                assert "TOP-SECRET" not in str(caught.value)
            assert upstream.connections == 0
            # No slot was kept by the failures (max_connections=1): the next request goes.
            assert await body_of(http, upstream.url(scheme="https")) == b"ok"


# --- proxies per facade ---


@dbless
@scenario
async def test_a_facade_with_its_own_proxy_goes_through_it_and_a_default_facade_does_not(pki, tinyproxy):
    async with Upstream(answering(answer(b"ok")), ssl_context=server_context(pki)) as upstream:
        async with client(ca_bundle=pki["ca"]) as http:
            proxied = Transport(proxy=tinyproxy.url())
            for own in (None, proxied, None, proxied):
                assert await body_of(http, upstream.url(scheme="https"), own) == b"ok"
            assert sorted(len(conn.requests) for conn in upstream.conns) == [2, 2]
    log = tinyproxy.log()
    assert log.count(f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1") == 1  # the facade's one tunnel, kept alive
    assert_no_credentials(log)


@dbless
@scenario
async def test_a_facades_own_proxy_carries_plain_http_in_absolute_form(tinyproxy):
    async with Upstream(answering(answer(b"plain"))) as upstream:
        async with client() as http:
            assert await body_of(http, upstream.url(), Transport(proxy=tinyproxy.url())) == b"plain"
    assert f"POST http://127.0.0.1:{upstream.port}/v1/x?api-version=1 HTTP/1.1" in tinyproxy.log()
    [request] = upstream.requests
    assert request.line == b"POST /v1/x?api-version=1 HTTP/1.1"


@dbless
@scenario
async def test_a_facade_set_to_none_bypasses_the_gateways_proxy(pki, tinyproxy):
    async with Upstream(answering(answer(b"ok")), ssl_context=server_context(pki)) as upstream:
        async with client(ca_bundle=pki["ca"], https_proxy=tinyproxy.url()) as http:
            for own in (None, Transport(proxy=DIRECT), Transport(proxy=DIRECT)):
                assert await body_of(http, upstream.url(scheme="https"), own) == b"ok"
            assert sorted(len(conn.requests) for conn in upstream.conns) == [1, 2]
    assert tinyproxy.log().count(f"CONNECT 127.0.0.1:{upstream.port}") == 1  # the default facade's only


@dbless
@scenario
async def test_a_facades_unreachable_proxy_is_named_without_its_credentials():
    async with Upstream(answering(answer())) as closed:
        port = closed.port
    own = Transport(proxy=f"http://{USER}:{PASSWORD}@127.0.0.1:{port}")
    async with client() as http:
        with pytest.raises(UpstreamUnreachable) as caught:
            await within(http.post("https://api.example.com/v1/x", b"", {}, transport=own))
    assert f"through the proxy http://127.0.0.1:{port}" in str(caught.value)
    assert_no_credentials(str(caught.value))
    assert_no_credentials(repr(own))
    assert redact_proxy_url(own.proxy) == f"http://127.0.0.1:{port}"


# --- the model's rules ---


def facade(**fields) -> ModelFacade:
    return ModelFacade(name="private-gpt", provider="openai", base_url="https://llm.internal/v1", **fields)


@dbless
@pytest.mark.parametrize("value", ["", DIRECT, "http://proxy.internal:3128", "http://proxy.internal",
                                   f"http://{SOMEONE}:{PASSWORD}@10.0.0.1:3128/", "http://[::1]:3128"])
def test_a_facade_takes_an_http_proxy_url_or_none(value):
    facade(upstream_proxy=value).clean()


@dbless
@pytest.mark.parametrize("value", [f"socks5://{SOMEONE}:{PASSWORD}@proxy:1080", f"https://{SOMEONE}:{PASSWORD}@proxy:443",
                                   f"{SOMEONE}:{PASSWORD}@proxy:3128", f"http://{SOMEONE}:{PASSWORD}@proxy:port",
                                   f"http://{SOMEONE}:{PASSWORD}@proxy:3128/path", f"http://{SOMEONE}:{PASSWORD}@:3128",
                                   f"http://{SOMEONE}:{PASSWORD}@proxy:3128?x=1", "None", "direct"])
def test_a_facade_refuses_any_other_proxy_and_never_repeats_its_credentials(value):
    with pytest.raises(ValidationError) as caught:
        facade(upstream_proxy=value).clean()
    [message] = caught.value.message_dict["upstream_proxy"]
    assert "http://" in message and DIRECT in message
    assert_no_credentials(message)
    assert SOMEONE not in message


@dbless
@pytest.mark.parametrize("field", ["upstream_ca_bundle", "upstream_client_cert", "upstream_client_key"])
def test_a_facades_tls_files_are_absolute_paths(field):
    fields = {"upstream_client_cert": "/etc/codevector/client.pem"}
    for value in ["certs/ca.pem", "~/ca.pem", "/etc/ca.pem\n"]:
        with pytest.raises(ValidationError) as caught:
            facade(**{**fields, field: value}).clean()
        assert list(caught.value.message_dict) == [field]
        assert "absolute path" in caught.value.message_dict[field][0]
    facade(**{**fields, field: "/etc/codevector/file.pem"}).clean()


@dbless
def test_a_facades_client_key_needs_its_client_certificate():
    with pytest.raises(ValidationError) as caught:
        facade(upstream_client_key="/etc/codevector/client.key").clean()
    assert caught.value.message_dict == {
        "upstream_client_key": ["A client key goes with the facade's own client certificate: set that too."]}


@dbless
def test_the_proxy_and_tls_fields_are_routing_fields():
    assert {"upstream_proxy", "upstream_ca_bundle", "upstream_client_cert", "upstream_client_key"} <= set(
        ModelFacade.ROUTING_FIELDS)


@dbless
def test_a_facade_without_settings_of_its_own_has_no_transport():
    assert transport(facade()) is None
    assert transport(facade(upstream_proxy=DIRECT)) == Transport(proxy=DIRECT)
    assert transport(facade(upstream_ca_bundle="/etc/ca.pem")) == Transport(ca_bundle="/etc/ca.pem")


@pytest.mark.django_db(transaction=True)  # load_facades closes old connections
def test_the_catalog_carries_each_facades_transport_and_shows_no_proxy_credentials():
    proxy = f"http://{SOMEONE}:{PASSWORD}@proxy.internal:3128"
    facade(upstream_proxy=proxy, upstream_client_cert="/etc/cv/client.pem",
           upstream_client_key="/etc/cv/client.key").save()
    ModelFacade.objects.create(name="plain", provider="openai", base_url="https://api.openai.com/v1")
    facades = load_facades()
    assert facades["plain"].transport is None
    assert facades["private-gpt"].transport == Transport(proxy, "", "/etc/cv/client.pem", "/etc/cv/client.key")
    assert "http://proxy.internal:3128" in repr(facades["private-gpt"])
    assert_no_credentials(repr(facades["private-gpt"]))


# --- through the gateway ---


def call(gateway_server, key: str, model: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{gateway_server.url}/v1/chat/completions", method="POST",
        data=json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_gateway_sends_a_facade_through_its_proxy_and_answers_502_when_its_ca_cannot_be_loaded(
        transactional_db, gateway_server, mock_upstream, tinyproxy, tmp_path):
    _, key = ApiKey.objects.create_key(User.objects.create_user("dora"), name="tests")
    common = {"provider": "openai", "upstream_model": "gpt-4o-mini"}
    ModelFacade.objects.create(name="via-proxy", base_url=f"{mock_upstream.url}/v1", upstream_proxy=tinyproxy.url(),
                               **common)
    ModelFacade.objects.create(name="broken-ca", base_url="https://127.0.0.1:9/v1",
                               upstream_ca_bundle=str(tmp_path / "missing.pem"), **common)
    gateway_server.refresh()

    status, answer_ = call(gateway_server, key, "via-proxy")
    assert status == 200 and answer_["model"] == "via-proxy"
    assert f"POST {mock_upstream.url}/v1/chat/completions HTTP/1.1" in tinyproxy.log()

    status, answer_ = call(gateway_server, key, "broken-ca")
    assert status == 502
    assert answer_["error"]["code"] == "upstream_unreachable"
    assert "UpstreamSettingUnusable" in answer_["error"]["message"]
    assert "missing.pem" not in answer_["error"]["message"]  # the gateway's paths are not the caller's business
    rows = FiveMinuteUsage.objects.filter(facade__name="broken-ca")
    assert [(row.requests, row.error_requests) for row in rows] == [(1, 1)]
