"""The admin pages for facades and API keys."""

import json
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
        "cache_write_extended_price": "6", "web_search_price": "10", "file_search_price": "2.5",
        "catalog_ref": "", "price_rules": "",
    })
    assert response.status_code == 302, response.content
    facade = ModelFacade.objects.get(name="claude-x")
    assert (facade.input_price_micros, facade.cached_input_price_micros, facade.cache_write_price_micros,
            facade.output_price_micros) == (3_000_000, 300_000, 3_750_000, 15_000_000)
    assert (facade.cache_write_extended_price_micros, facade.web_search_price_micros,
            facade.file_search_price_micros) == (6_000_000, 10_000_000, 2_500_000)
    assert (facade.price_rules, facade.catalog_ref, facade.catalog_version) == ({}, "", "")
    assert facade.upstream_model == "claude-x"
    page = admin_client.get(f"/admin/gateway/modelfacade/{facade.pk}/change/").content.decode()
    assert 'name="cache_write_price" value="3.75"' in page
    assert 'name="cache_write_extended_price" value="6"' in page
    assert 'name="web_search_price" value="10"' in page and 'name="file_search_price" value="2.5"' in page


def test_a_facade_price_with_sub_micro_precision_is_refused(admin_client):
    response = admin_client.post("/admin/gateway/modelfacade/add/", {
        "name": "x", "provider": "openai", "base_url": "https://api.openai.com/v1", "is_active": "on",
        "input_price": "0.0000001", "cached_input_price": "0", "cache_write_price": "0", "output_price": "-1",
        "cache_write_extended_price": "0", "web_search_price": "-10", "file_search_price": "0",
    })
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert set(errors) == {"input_price", "output_price", "web_search_price"}
    assert not ModelFacade.objects.exists()


# --- the new prices, price_rules and the catalog picker (issue #28) ---------------------------------

SONNET_USD = {"input_price": "3", "cached_input_price": "0.3", "cache_write_price": "3.75",
              "cache_write_extended_price": "6", "output_price": "15", "web_search_price": "10",
              "file_search_price": "0"}
PRICE_SET = {"input_micros": 1, "cached_input_micros": 2, "cache_write_micros": 3, "cache_write_extended_micros": 4,
             "output_micros": 5, "web_search_micros": 6, "file_search_micros": 7}


def data_island(page: str) -> dict:
    return json.loads(re.search(r'<script id="facade-catalog-data" type="application/json">(.*?)</script>',
                                page, re.S).group(1))


def test_the_form_offers_the_catalog_models_with_their_prices_in_usd(admin_client):
    page = admin_client.get("/admin/gateway/modelfacade/add/").content.decode()
    assert '<option value="anthropic:claude-sonnet-4-5">claude-sonnet-4-5 (Claude Sonnet 4.5)</option>' in page
    assert 'value="openrouter:google/gemini-2.5-flash"' not in page  # sub-micro-USD prices: not offered
    assert '<script src="/static/gateway/facade_catalog.js"></script>' in page
    island = data_island(page)
    assert island["fields"] == list(SONNET_USD)
    prices, rules = island["models"]["anthropic:claude-sonnet-4-5"]
    assert prices == list(SONNET_USD.values())
    assert rules["tiers"][0]["above"] == 200_000 and rules["tiers"][0]["output_micros"] == 22_500_000
    assert rules["variants"]["batch"]["input_micros"] == 1_500_000
    assert island["models"]["openai:text-embedding-3-small"] == [["0.02", "0.02", "0.02", "0.02", "0", "0", "0"], {}]


def test_a_picked_catalog_model_is_stored_with_its_version_and_edited_prices_are_kept(admin_client, claude):
    from gateway.price_catalog import differences, facade_price_fields

    rules = facade_price_fields("anthropic:claude-sonnet-4-5")["price_rules"]
    response = admin_client.post(f"/admin/gateway/modelfacade/{claude.pk}/change/", change_form(
        claude, catalog_ref="anthropic:claude-sonnet-4-5", price_rules=json.dumps(rules),
        **{**SONNET_USD, "input_price": "2.7"}))  # a negotiated discount on input
    assert response.status_code == 302, response.content
    claude.refresh_from_db()
    assert (claude.catalog_ref, claude.catalog_version) == ("anthropic:claude-sonnet-4-5", "genai-prices 0.2.5")
    assert (claude.input_price_micros, claude.cache_write_extended_price_micros, claude.web_search_price_micros,
            claude.price_rules) == (2_700_000, 6_000_000, 10_000_000, rules)
    assert [(d.field, d.stored, d.catalog) for d in differences(claude)] == [("input_price_micros", 2_700_000, 3_000_000)]
    page = admin_client.get(f"/admin/gateway/modelfacade/{claude.pk}/change/").content.decode()
    assert '<option value="anthropic:claude-sonnet-4-5" selected>' in page


def test_a_catalog_model_the_catalog_does_not_offer_is_a_form_error(admin_client, claude):
    response = admin_client.post(f"/admin/gateway/modelfacade/{claude.pk}/change/",
                                 change_form(claude, catalog_ref="anthropic:claude-nonesuch"))
    assert response.status_code == 200
    assert "Select a valid choice" in response.context["adminform"].form.errors["catalog_ref"][0]


def test_clearing_the_catalog_model_clears_its_version(admin_client, claude):
    ModelFacade.objects.filter(pk=claude.pk).update(catalog_ref="anthropic:claude-sonnet-4-5",
                                                     catalog_version="genai-prices 0.2.5")
    claude.refresh_from_db()
    response = admin_client.post(f"/admin/gateway/modelfacade/{claude.pk}/change/", change_form(claude, catalog_ref=""))
    assert response.status_code == 302, response.content
    claude.refresh_from_db()
    assert (claude.catalog_ref, claude.catalog_version) == ("", "")


def test_price_rules_round_trip_as_json(admin_client, gpt):
    rules = {"tiers": [{"above": 272_000, **PRICE_SET}], "variants": {"flex": {**PRICE_SET, "tiers": []}}}
    response = admin_client.post(f"/admin/gateway/modelfacade/{gpt.pk}/change/",
                                 change_form(gpt, price_rules=json.dumps(rules)))
    assert response.status_code == 302, response.content
    gpt.refresh_from_db()
    assert gpt.price_rules == rules
    page = admin_client.get(f"/admin/gateway/modelfacade/{gpt.pk}/change/").content.decode()
    shown = re.search(r'<textarea name="price_rules"[^>]*>(.*?)</textarea>', page, re.S).group(1)
    assert json.loads(shown.replace("&quot;", '"')) == rules


@pytest.mark.parametrize("rules, message", [
    ("{tiers", "price_rules is not JSON (Expecting property name enclosed in double quotes: line 1 column 2"),
    ("[1]", 'price_rules: must be an object with "tiers" and "variants", not list'),
    (json.dumps({"tiers": [{"above": 1000}]}), "price_rules.tiers[0].input_micros: missing"),
    (json.dumps({"tiers": [{**PRICE_SET, "above": 1000, "output_micros": 2.5}]}),
     "price_rules.tiers[0].output_micros: must be a whole number, not number 2.5"),
    (json.dumps({"variants": {"Priority": PRICE_SET}}), "price_rules.variants.Priority: variant name 'Priority'"),
])
def test_bad_price_rules_are_a_form_error_naming_the_field(admin_client, gpt, rules, message):
    response = admin_client.post(f"/admin/gateway/modelfacade/{gpt.pk}/change/", change_form(gpt, price_rules=rules))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["price_rules"] and errors["price_rules"][0].startswith(message)
    gpt.refresh_from_db()
    assert gpt.price_rules == {}


def test_the_facade_list_shows_the_short_kind_the_catalog_model_and_the_main_prices(admin_client, gpt, claude):
    ModelFacade.objects.filter(pk=claude.pk).update(catalog_ref="anthropic:claude-sonnet-4-5", output_price_micros=10_000_000)
    page = admin_client.get("/admin/gateway/modelfacade/").content.decode()
    rows = re.findall(r"<tr>(.*?)</tr>", page.split("<tbody>")[1], re.S)
    cells = [re.findall(r'<t[hd] class="field-([a-z_]+)"[^>]*>(.*?)</t[hd]>', row, re.S) for row in rows]
    text = [{name: re.sub(r"<[^>]+>", "", value) for name, value in row} for row in cells]
    assert [(r["name"], r["provider_short"], r["kind_short"], r["catalog"], r["input_usd"], r["output_usd"])
            for r in text] == [("claude-test", "anthropic", "chat", "anthropic:claude-sonnet-4-5", "3", "10"),
                               ("gpt-test", "openai", "chat", "—", "0.15", "0.6")]
    assert '<span title="http://127.0.0.1:9">anthropic</span>' in page  # the base URL on hover


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
            "output_price": "0.6", "cache_write_extended_price": "0", "web_search_price": "0", "file_search_price": "0",
            "catalog_ref": facade.catalog_ref, "price_rules": json.dumps(facade.price_rules)}
    return {**data, **changes}


def test_staff_without_the_routing_permission_changes_prices_but_never_routing(client, gpt):
    """Catches the finding of issue #27: "change model facade" alone could point a facade at a
    server of one's own with any of the gateway's environment variables as its credential."""
    client.force_login(staff_with("view_modelfacade", "change_modelfacade"))
    page = client.get(f"/admin/gateway/modelfacade/{gpt.pk}/change/").content.decode()
    assert 'name="base_url"' not in page and 'name="api_key_env"' not in page and 'name="provider"' not in page
    assert 'name="input_price"' in page
    assert 'name="catalog_ref"' in page and 'name="price_rules"' in page and 'name="web_search_price"' in page
    response = client.post(f"/admin/gateway/modelfacade/{gpt.pk}/change/", change_form(
        gpt, base_url="https://attacker.example/v1", api_key_env="SECRET_KEY", provider="anthropic",
        openai_organization="org-attacker", input_price="0.2", catalog_ref="openai:gpt-4o-mini"))
    assert response.status_code == 302, response.content
    gpt.refresh_from_db()
    assert (gpt.base_url, gpt.api_key_env, gpt.provider, gpt.openai_organization) == (
        "http://127.0.0.1:9/v1", "", "openai", "")
    assert (gpt.input_price_micros, gpt.catalog_ref, gpt.catalog_version) == (
        200_000, "openai:gpt-4o-mini", "genai-prices 0.2.5")
    assert client.get("/admin/gateway/modelfacade/add/").status_code == 403  # a new facade is routing


def test_a_user_who_may_only_view_facades_sees_their_prices_in_usd(client, claude):
    ModelFacade.objects.filter(pk=claude.pk).update(catalog_ref="anthropic:claude-sonnet-4-5",
                                                     cache_write_extended_price_micros=6_000_000)
    client.force_login(staff_with("view_modelfacade"))
    response = client.get(f"/admin/gateway/modelfacade/{claude.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    shown = [re.sub(r"\s+", " ", value).strip() for value in re.findall(r'<div class="readonly">(.*?)</div>', page, re.S)]
    assert ["anthropic:claude-sonnet-4-5", "3", "0.3", "3.75", "6", "15", "0", "0"] == shown[-9:-1]
    assert 'name="input_price"' not in page and 'name="catalog_ref"' not in page


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


def test_a_proxy_url_is_never_shown_with_its_credentials_read_only_or_in_the_history(client, gpt):
    ModelFacade.objects.filter(pk=gpt.pk).update(upstream_proxy="http://puser:s3cret-pass@proxy.corp:3128")
    client.force_login(staff_with("view_modelfacade", "change_modelfacade"))
    page = client.get(f"/admin/gateway/modelfacade/{gpt.pk}/change/").content.decode()
    assert "proxy.corp:3128" in page and "s3cret-pass" not in page and "puser" not in page
    router = User.objects.create_superuser("rita", "rita@example.com", "rita-password")
    client.force_login(router)
    gpt.refresh_from_db()
    response = client.post(f"/admin/gateway/modelfacade/{gpt.pk}/change/", change_form(
        gpt, upstream_proxy="http://other:n3w-pass@proxy2.corp:3128", upstream_ca_bundle="",
        upstream_client_cert="", upstream_client_key=""))
    assert response.status_code == 302, response.content
    message = LogEntry.objects.get(object_id=str(gpt.pk)).get_change_message()
    assert "proxy.corp:3128" in message and "proxy2.corp:3128" in message
    assert "s3cret-pass" not in message and "n3w-pass" not in message


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
