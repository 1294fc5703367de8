"""The admin pages for facades and API keys."""

import re

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User

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


# --- routing is a privilege of its own (issue #27) ------------------------------------------------


def staff_with(*codenames):
    user = User.objects.create_user("pat", is_staff=True, password="pat-password")
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def change_form(facade, **changes):
    """Every field of the facade's change form, as the page would post it, with `changes`."""
    data = {"name": facade.name, "provider": facade.provider, "kind": facade.kind, "base_url": facade.base_url,
            "upstream_model": facade.upstream_model, "api_key_env": facade.api_key_env,
            "openai_organization": facade.openai_organization, "openai_project": facade.openai_project,
            "is_active": "on", "input_price": "0.15", "cached_input_price": "0.075", "cache_write_price": "0",
            "output_price": "0.6"}
    return {**data, **changes}


def test_staff_without_the_routing_permission_changes_prices_but_never_routing(client, gpt):
    """Catches the finding of issue #27: "change model facade" alone could point a facade at a
    server of one's own with any of the gateway's environment variables as its credential."""
    client.force_login(staff_with("view_modelfacade", "change_modelfacade"))
    page = client.get(f"/admin/gateway/modelfacade/{gpt.pk}/change/").content.decode()
    assert 'name="base_url"' not in page and 'name="api_key_env"' not in page and 'name="provider"' not in page
    assert 'name="input_price"' in page
    response = client.post(f"/admin/gateway/modelfacade/{gpt.pk}/change/", change_form(
        gpt, base_url="https://attacker.example/v1", api_key_env="SECRET_KEY", provider="anthropic",
        openai_organization="org-attacker", input_price="0.2"))
    assert response.status_code == 302, response.content
    gpt.refresh_from_db()
    assert (gpt.base_url, gpt.api_key_env, gpt.provider, gpt.openai_organization) == (
        "http://127.0.0.1:9/v1", "", "openai", "")
    assert gpt.input_price_micros == 200_000
    assert client.get("/admin/gateway/modelfacade/add/").status_code == 403  # a new facade is routing


def test_the_routing_permission_changes_routing_and_the_history_says_who_and_what(client, gpt):
    router = staff_with("view_modelfacade", "change_modelfacade", "change_facade_routing")
    client.force_login(router)
    response = client.post(f"/admin/gateway/modelfacade/{gpt.pk}/change/", change_form(
        gpt, base_url="https://api.openai.com/v1", api_key_env="CODEVECTOR_UPSTREAM_OPENAI"))
    assert response.status_code == 302, response.content
    gpt.refresh_from_db()
    assert (gpt.base_url, gpt.api_key_env) == ("https://api.openai.com/v1", "CODEVECTOR_UPSTREAM_OPENAI")
    entry = LogEntry.objects.get(object_id=str(gpt.pk))
    assert entry.user == router
    message = entry.get_change_message()
    assert "'http://127.0.0.1:9/v1' → 'https://api.openai.com/v1'" in message
    assert "api_key_env: '' → 'CODEVECTOR_UPSTREAM_OPENAI'" in message


@pytest.mark.parametrize("variable", ["SECRET_KEY", "DATABASE_URL", "USAGE_BUFFER_DIR", "CODEVECTOR_UPSTREAMX"])
def test_a_credential_variable_outside_the_allowlist_is_a_form_error(admin_client, gpt, variable):
    response = admin_client.post(f"/admin/gateway/modelfacade/{gpt.pk}/change/",
                                 change_form(gpt, api_key_env=variable))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert f"{variable} is not an upstream credential variable" in errors["api_key_env"][0]
    gpt.refresh_from_db()
    assert gpt.api_key_env == ""


@pytest.mark.parametrize("variable", ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "CODEVECTOR_UPSTREAM_AZURE"])
def test_allowlisted_credential_variables_are_accepted(admin_client, gpt, variable):
    response = admin_client.post(f"/admin/gateway/modelfacade/{gpt.pk}/change/",
                                 change_form(gpt, api_key_env=variable))
    assert response.status_code == 302
    gpt.refresh_from_db()
    assert gpt.api_key_env == variable


def test_object_routes_take_integers(admin_client, alice):
    assert admin_client.get("/admin/auth/user/999999/usage/").status_code == 404
    assert admin_client.get("/admin/gateway/apikey/999999/usage/").status_code == 404
    for path in ("/admin/auth/user/abc/usage/", "/admin/gateway/apikey/abc/usage/"):
        assert admin_client.get(path, follow=True).status_code == 200  # the admin's "does not exist" page, never a 500


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
