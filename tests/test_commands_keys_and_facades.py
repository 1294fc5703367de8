"""manage.py create_api_key and create_facade."""

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from gateway.models import KEY_PREFIX, ApiKey, ModelFacade, hash_key


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_api_key_prints_the_key_alone_on_the_last_line_and_stores_only_its_digest(alice):
    out, err = run("create_api_key", "alice", "--name", "laptop", "--expires", "30")
    raw = out.strip().splitlines()[-1]
    assert raw.startswith(KEY_PREFIX) and len(raw) >= len(KEY_PREFIX) + 43
    key = ApiKey.objects.get()
    assert key.digest == hash_key(raw) and key.prefix == raw[:12] and key.name == "laptop"
    assert raw not in err and key.prefix in err
    assert timedelta(days=29, hours=23) < key.expires_at - timezone.now() <= timedelta(days=30)
    assert key.is_usable()


def test_create_api_key_refuses_an_unknown_user(db):
    with pytest.raises(CommandError, match="No user named 'ghost'"):
        run("create_api_key", "ghost")


def test_create_api_key_refuses_zero_days(alice):
    with pytest.raises(CommandError, match="at least 1"):
        run("create_api_key", "alice", "--expires", "0")


def test_keys_of_an_inactive_user_revoked_or_expired_are_not_usable(alice):
    key, _ = ApiKey.objects.create_key(alice)
    assert ApiKey.objects.usable().count() == 1
    alice.is_active = False
    alice.save()
    key.refresh_from_db()
    assert not key.is_usable() and ApiKey.objects.usable().count() == 0
    alice.is_active = True
    alice.save()
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert ApiKey.objects.usable().count() == 0
    ApiKey.objects.filter(pk=key.pk).update(expires_at=None, revoked_at=timezone.now())
    assert ApiKey.objects.usable().count() == 0


def test_create_facade_creates_then_updates_keeping_left_out_options(db):
    run("create_facade", "gpt-x", "--provider", "openai", "--base-url", "https://api.openai.com/v1",
        "--input-price", "0.15", "--cached-input-price", "0.075", "--output-price", "0.6", "--api-key-env", "OPENAI_API_KEY")
    facade = ModelFacade.objects.get(name="gpt-x")
    assert (facade.input_price_micros, facade.cached_input_price_micros, facade.output_price_micros) == (150000, 75000, 600000)
    assert facade.upstream_model == "gpt-x" and facade.api_key_env == "OPENAI_API_KEY"
    out, _ = run("create_facade", "gpt-x", "--output-price", "0.000001", "--upstream-model", "gpt-4o-mini")
    facade.refresh_from_db()
    assert "Updated" in out
    assert (facade.input_price_micros, facade.output_price_micros, facade.upstream_model) == (150000, 1, "gpt-4o-mini")
    assert facade.base_url == "https://api.openai.com/v1"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--provider", "openai", "--base-url", "not a url"], "base_url"),
        (["--provider", "openai", "--base-url", "https://x.test", "--input-price", "-1"], "negative"),
        (["--provider", "openai", "--base-url", "https://x.test", "--output-price", "abc"], "not a number"),
        (["--provider", "openai", "--base-url", "https://x.test", "--output-price", "0.0000001"], "6 digits"),
        (["--provider", "openai", "--base-url", "https://x.test", "--output-price", "NaN"], "not a price"),
        (["--base-url", "https://x.test"], "--provider"),
        (["--provider", "openai", "--base-url", "https://x.test", "--api-key-env", "SECRET_KEY"],
         "SECRET_KEY is not an upstream credential variable"),
        (["--provider", "anthropic", "--base-url", "https://x.test", "--kind", "embeddings"],
         "Anthropic has no embeddings endpoint"),
        (["--provider", "anthropic", "--base-url", "https://x.test", "--openai-organization", "org-1"],
         "OpenAI-compatible facades only"),
    ],
)
def test_create_facade_refuses_bad_input_with_a_clear_error(db, args, message):
    with pytest.raises(CommandError, match=message):
        run("create_facade", "bad", *args)
    assert not ModelFacade.objects.exists()


def test_create_facade_sets_the_organization_and_project_that_pay(db):
    run("create_facade", "gpt-org", "--provider", "openai", "--base-url", "https://api.openai.com/v1",
        "--api-key-env", "CODEVECTOR_UPSTREAM_OPENAI", "--openai-organization", "org-abc", "--openai-project", "proj_1")
    facade = ModelFacade.objects.get(name="gpt-org")
    assert (facade.openai_organization, facade.openai_project) == ("org-abc", "proj_1")


def test_create_facade_refuses_an_unknown_provider(db):
    with pytest.raises(CommandError, match="invalid choice"):
        run("create_facade", "bad", "--provider", "mistral", "--base-url", "https://x.test")
