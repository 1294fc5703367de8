"""The admin pages for facades and API keys."""

import re

import pytest
from django.contrib.auth.models import User

from gateway.models import ApiKey, ModelFacade, hash_key


@pytest.fixture
def root(db):
    return User.objects.create_superuser("root", "root@example.com", "root-password")


@pytest.fixture
def admin_client(client, root):
    client.force_login(root)
    return client


def test_a_facade_is_created_with_prices_in_usd_and_stored_in_micros(admin_client):
    response = admin_client.post("/admin/gateway/modelfacade/add/", {
        "name": "claude-x", "provider": "anthropic", "base_url": "https://api.anthropic.com",
        "upstream_model": "", "api_key_env": "ANTHROPIC_API_KEY", "is_active": "on",
        "input_price": "3", "cached_input_price": "0.30", "cache_write_price": "3.75", "output_price": "15",
    })
    assert response.status_code == 302, response.content
    facade = ModelFacade.objects.get(name="claude-x")
    assert (facade.input_price_micros, facade.cached_input_price_micros, facade.cache_write_price_micros,
            facade.output_price_micros) == (3_000_000, 300_000, 3_750_000, 15_000_000)
    assert facade.upstream_model == "claude-x"
    page = admin_client.get(f"/admin/gateway/modelfacade/{facade.pk}/change/").content.decode()
    assert 'name="cache_write_price" value="3.75"' in page


def test_a_facade_price_with_sub_micro_precision_is_refused(admin_client):
    response = admin_client.post("/admin/gateway/modelfacade/add/", {
        "name": "x", "provider": "openai", "base_url": "https://api.openai.com/v1", "is_active": "on",
        "input_price": "0.0000001", "cached_input_price": "0", "cache_write_price": "0", "output_price": "-1",
    })
    assert response.status_code == 200
    assert not ModelFacade.objects.exists()


def test_facades_cannot_be_deleted_only_deactivated(admin_client, gpt):
    assert admin_client.get(f"/admin/gateway/modelfacade/{gpt.pk}/delete/").status_code == 403
    admin_client.post("/admin/gateway/modelfacade/", {"action": "deactivate", "_selected_action": [gpt.pk]})
    gpt.refresh_from_db()
    assert gpt.is_active is False


def test_a_new_key_is_shown_once_and_only_its_prefix_after(admin_client, alice):
    response = admin_client.post("/admin/gateway/apikey/add/", {"user": alice.pk, "name": "ci", "expires_in_days": ""})
    assert response.status_code == 200
    page = response.content.decode()
    raw = re.search(r'id="new-api-key" type="text" readonly value="(cvk_[^"]+)"', page).group(1)
    key = ApiKey.objects.get()
    assert key.digest == hash_key(raw) and key.user == alice and key.expires_at is None
    listing = admin_client.get("/admin/gateway/apikey/").content.decode()
    change = admin_client.get(f"/admin/gateway/apikey/{key.pk}/change/").content.decode()
    assert key.prefix in listing
    for later_page in (listing, change):
        assert raw not in later_page and raw[len(key.prefix):] not in later_page and key.digest not in later_page


def test_keys_are_revoked_from_the_list(admin_client, alice):
    key, _ = ApiKey.objects.create_key(alice)
    admin_client.post("/admin/gateway/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.revoked_at is not None and not key.is_usable()
