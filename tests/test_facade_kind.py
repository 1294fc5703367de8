"""A facade's kind (chat or embeddings): set by create_facade and the demo, carried in the gateway's
snapshot, and enforced by the gateway — a model asked at the other kind's endpoint gets 400
wrong_endpoint in the caller's error format, and nothing is recorded."""

import io
import json

import anthropic
import openai
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from codevector.demo import DEMO_FACADES, ensure_demo_facades
from gateway.catalog import load_facades
from gateway.models import ModelFacade
from tests.test_gateway_app import EMBED, LONG_PROMPT, chat, expected, gw, ledger, post  # noqa: F401 (gw)


def run(*args):
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


# --- the field, the command, the demo, the snapshot -----------------------------------------------


def test_create_facade_sets_the_kind_chat_by_default_and_keeps_it_when_left_out(db):
    run("create_facade", "emb", "--provider", "openai", "--base-url", "https://api.openai.com/v1",
        "--kind", "embeddings", "--input-price", "0.02")
    run("create_facade", "chatty", "--provider", "openai", "--base-url", "https://api.openai.com/v1")
    assert dict(ModelFacade.objects.values_list("name", "kind")) == {"emb": "embeddings", "chatty": "chat"}
    out = run("create_facade", "emb", "--input-price", "0.01")
    assert "embeddings" in out and ModelFacade.objects.get(name="emb").kind == "embeddings"
    run("create_facade", "emb", "--kind", "chat")
    assert ModelFacade.objects.get(name="emb").kind == "chat"


def test_create_facade_refuses_an_unknown_kind_and_anthropic_embeddings(db):
    with pytest.raises(CommandError, match="invalid choice"):
        run("create_facade", "x", "--provider", "openai", "--base-url", "https://x.test", "--kind", "images")
    with pytest.raises(CommandError, match="Anthropic has no embeddings endpoint"):
        run("create_facade", "x", "--provider", "anthropic", "--base-url", "https://x.test", "--kind", "embeddings")
    assert not ModelFacade.objects.exists()


def test_the_demo_embedding_facade_is_of_kind_embeddings_and_the_rest_chat(db):
    facades = ensure_demo_facades("http://127.0.0.1:8001")
    assert {f.name: f.kind for f in facades} == {
        name: "embeddings" if name == "text-embedding-3-small" else "chat" for name, *_ in DEMO_FACADES}


@pytest.mark.django_db(transaction=True)  # load_facades closes old connections
def test_the_gateway_snapshot_carries_the_kind():
    ensure_demo_facades("http://127.0.0.1:8001")
    snapshot = load_facades()
    assert snapshot["text-embedding-3-small"].kind == "embeddings" and snapshot["gpt-4o"].kind == "chat"


@pytest.mark.django_db(transaction=True)
def test_the_migration_makes_existing_facades_chat_but_embedding_models_embeddings():
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    before = [("gateway", "0002_unique_key_prefix")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = MigrationExecutor(connection).loader.project_state(before).apps
    for name in ("gpt-old", "text-embedding-old"):
        old.get_model("gateway", "ModelFacade").objects.create(name=name, provider="openai",
                                                               base_url="http://127.0.0.1:9/v1", upstream_model=name)
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(latest)
    assert dict(ModelFacade.objects.values_list("name", "kind")) == {"gpt-old": "chat",
                                                                     "text-embedding-old": "embeddings"}


# --- the gateway ----------------------------------------------------------------------------------


@pytest.fixture
def kinds(gw):
    """The gateway's facades, `embed-test` of kind embeddings."""
    ModelFacade.objects.filter(name="embed-test").update(kind="embeddings")
    gw.server.refresh()
    return gw


def openai_error(status, body):
    return status, json.loads(body)["error"]


def test_embeddings_with_an_embeddings_facade_are_served_and_counted(kinds):
    response = kinds.openai.embeddings.create(model="embed-test", input=["one", "two"])
    assert response.model == "embed-test"
    assert ledger() == expected(EMBED, inp=response.usage.prompt_tokens)


def test_embeddings_with_a_chat_facade_get_400_wrong_endpoint(kinds):
    forwarded = len(kinds.mock.seen)
    status, _, body = post(kinds, "/v1/embeddings", json.dumps({"model": "gpt-test", "input": "hi"}).encode())
    status, error = openai_error(status, body)
    assert status == 400 and error["code"] == "wrong_endpoint" and error["param"] == "model"
    assert error["type"] == "invalid_request_error"
    assert "not an embeddings model" in error["message"] and "/v1/chat/completions" in error["message"]
    with pytest.raises(openai.BadRequestError) as raised:
        kinds.openai.embeddings.create(model="gpt-test", input="hi")
    assert raised.value.code == "wrong_endpoint"
    assert all(value == 0 for value in ledger().values())
    assert len(kinds.mock.seen) == forwarded  # refused before forwarding


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_chat_and_responses_with_an_embeddings_facade_get_400_wrong_endpoint(kinds, endpoint):
    with pytest.raises(openai.BadRequestError) as raised:
        if endpoint == "chat":
            kinds.openai.chat.completions.create(model="embed-test", messages=chat())
        else:
            kinds.openai.responses.create(model="embed-test", input=LONG_PROMPT)
    assert raised.value.status_code == 400 and raised.value.code == "wrong_endpoint"
    assert raised.value.body["message"] == "The model 'embed-test' is an embeddings model: use /v1/embeddings."
    assert all(value == 0 for value in ledger().values())


def test_a_streamed_chat_with_an_embeddings_facade_is_refused_before_streaming(kinds):
    status, headers, body = post(kinds, "/v1/chat/completions", json.dumps(
        {"model": "embed-test", "messages": chat(), "stream": True}).encode())
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "wrong_endpoint"


def test_anthropic_callers_get_the_error_in_their_format(kinds):
    with pytest.raises(anthropic.BadRequestError) as raised:
        kinds.anthropic.messages.create(model="embed-test", max_tokens=10, messages=chat())
    assert raised.value.body["type"] == "error"
    assert "use /v1/embeddings" in raised.value.body["error"]["message"]
    assert all(value == 0 for value in ledger().values())
