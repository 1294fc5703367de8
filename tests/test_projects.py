"""Projects (#30): every API key belongs to one project, fixed when it is created; everyone is a
member of the Default project, which also takes every key made without one — by the ORM, by raw
SQL (the ledger's reserved keys) and by the migration that introduced projects."""

import io
import re
from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from gateway.models import DEFAULT_PROJECT_ID, ApiKey, ModelFacade, Project, ProjectMember
from usage import sql
from usage.degraded.buffer import BufferWriter
from usage.degraded.drain import drain
from usage.ledger.delta import UsageDelta
from usage.reserved import RESERVED_KEY_NAME, reserved_key_digest, reserved_key_prefix
from usage.models import FiveMinuteUsage

AT = datetime(2026, 5, 4, 10, 2, tzinfo=UTC)
BEFORE_PROJECTS = ("gateway", "0006_facade_transport")
# The usage app's last migration before any that names projects (budget scopes do): the old state.
USAGE_BEFORE_PROJECTS = ("usage", "0013_billed_quantities")
TABLES = ("usage_bucket_5min", "usage_bucket_hour", "usage_bucket_day", "usage_bucket_month")
SOME_COUNTERS = ("requests", "input_tokens", "output_tokens", "cost_nanos")


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def apollo(alice):
    """A project alice owns; bob is not in it."""
    return Project.objects.create_project("Apollo", "The moon shot.", owners=[alice])


@pytest.fixture
def root(db):
    return User.objects.create_superuser("root", "root@example.com", "root-password")


@pytest.fixture
def admin_client(client, root):
    client.force_login(root)
    return client


# --- the migration ---------------------------------------------------------------------------


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


def totals_per_user_and_bucket(table):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT user_id, bucket_start, {', '.join(f'SUM({c})' for c in SOME_COUNTERS)} "
                       f"FROM {table} GROUP BY user_id, bucket_start")
        return sorted(cursor.fetchall())


@pytest.mark.django_db(transaction=True)
def test_the_migration_puts_every_key_in_the_default_project_and_moves_no_total(tmp_path):
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    migrate([BEFORE_PROJECTS, USAGE_BEFORE_PROJECTS])
    old = MigrationExecutor(connection).loader.project_state([BEFORE_PROJECTS, USAGE_BEFORE_PROJECTS]).apps
    ada, grace = (old.get_model("auth", "User").objects.create(username=name) for name in ("ada", "grace"))
    facade = old.get_model("gateway", "ModelFacade").objects.create(
        name="gpt-old", provider="openai", base_url="http://127.0.0.1:9/v1", upstream_model="gpt-4o-mini")
    laptop = old.get_model("gateway", "ApiKey").objects.create(user=ada, name="laptop", prefix="cvk_abcdefgh",
                                                               digest="d" * 64)
    reserved = old.get_model("gateway", "ApiKey").objects.create(
        user=grace, name=RESERVED_KEY_NAME, prefix=reserved_key_prefix(grace.pk),
        digest=reserved_key_digest(grace.pk), revoked_at=AT)
    with connection.cursor() as cursor:
        for level, table in enumerate(TABLES):
            for row in range(4):
                user, key = (ada, laptop) if row % 2 else (grace, reserved)
                day = f"2026-0{row // 2 + 1}-01 00:00:00" + ("+00:00" if connection.vendor == "postgresql" else "")
                cursor.execute(
                    f"INSERT INTO {table} (bucket_start, user_id, key_id, facade_id, {', '.join(SOME_COUNTERS)}) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    [day, user.pk, key.pk, facade.pk, *(1000 * level + 10 * row + i for i in range(4))])
    before = {table: totals_per_user_and_bucket(table) for table in TABLES}
    assert len(before["usage_bucket_day"]) == 4
    # Buffered during the upgrade, without a key (the old format): replayed once projects exist.
    writer = BufferWriter(tmp_path)
    writer.append_many([UsageDelta(id="upgrade-1", user_id=ada.pk, facade_id=facade.pk, at=AT, output_tokens=4,
                                   cost_nanos=23)])
    writer.seal()

    migrate(latest)

    default = Project.objects.get(pk=DEFAULT_PROJECT_ID)
    assert (default.public_id, default.name, default.is_active) == ("proj_default", "Default project", True)
    assert sorted(ApiKey.objects.values_list("prefix", "project_id")) == [
        ("cvk_abcdefgh", DEFAULT_PROJECT_ID), (f"pre-{grace.pk}", DEFAULT_PROJECT_ID)]
    for table in TABLES:
        assert totals_per_user_and_bucket(table) == before[table]
    assert drain(tmp_path).applied == 1
    ada_reserved = ApiKey.objects.get(digest=reserved_key_digest(ada.pk))
    assert ada_reserved.project_id == DEFAULT_PROJECT_ID
    assert [(r.user_id, r.key_id, r.requests, r.output_tokens, r.cost_nanos)
            for r in FiveMinuteUsage.objects.filter(bucket_start__gte=datetime(2026, 5, 1, tzinfo=UTC))] == [
        (ada.pk, ada_reserved.pk, 1, 4, 23)]
    # The next project is not given the Default project's fixed primary key.
    assert Project.objects.create(name="After").pk > DEFAULT_PROJECT_ID


def test_a_key_inserted_by_raw_sql_lands_in_the_default_project(alice):
    with connection.cursor() as cursor:
        cursor.execute(sql.ensure_reserved_keys(ApiKey._meta.db_table, 1),
                       [alice.pk, RESERVED_KEY_NAME, reserved_key_prefix(alice.pk),
                        reserved_key_digest(alice.pk), AT, AT])
    assert ApiKey.objects.get(digest=reserved_key_digest(alice.pk)).project == Project.objects.default()


def test_a_keyless_buffered_delta_counts_against_the_reserved_key_in_the_default_project(tmp_path, alice, gpt):
    writer = BufferWriter(tmp_path)
    writer.append_many([UsageDelta(id="keyless-1", user_id=alice.pk, facade_id=gpt.pk, at=AT, output_tokens=6,
                                   cost_nanos=29)])
    writer.seal()
    assert drain(tmp_path).applied == 1
    reserved = ApiKey.objects.get(name=RESERVED_KEY_NAME, user=alice)
    assert reserved.project_id == DEFAULT_PROJECT_ID
    assert [(r.user_id, r.key_id, r.requests, r.output_tokens, r.cost_nanos) for r in FiveMinuteUsage.objects.all()] \
        == [(alice.pk, reserved.pk, 1, 6, 29)]


@pytest.mark.django_db(transaction=True)
def test_a_flush_leaves_the_default_project_in_place_and_new_projects_after_it():
    Project.objects.create(name="Before the flush")
    call_command("flush", interactive=False, verbosity=0)
    assert list(Project.objects.values_list("pk", "public_id")) == [(DEFAULT_PROJECT_ID, "proj_default")]
    assert Project.objects.create(name="After the flush").pk > DEFAULT_PROJECT_ID


# --- membership --------------------------------------------------------------------------------


def test_everyone_is_a_member_of_the_default_project_and_of_the_projects_they_were_added_to(alice, bob, apollo):
    assert list(Project.objects.for_user(alice).values_list("name", flat=True)) == ["Apollo", "Default project"]
    assert list(Project.objects.for_user(bob).values_list("name", flat=True)) == ["Default project"]
    assert apollo.has_member(alice) and not apollo.has_member(bob)
    assert Project.objects.default().has_member(bob)
    assert list(Project.objects.for_user(AnonymousUser()).values_list("name", flat=True)) == ["Default project"]
    assert list(apollo.members.values_list("user__username", "role")) == [("alice", "owner")]


def test_a_project_has_a_public_id_that_is_not_the_default_ones(apollo):
    assert re.fullmatch(r"proj_[A-Za-z0-9_-]{16}", apollo.public_id)
    assert apollo.pk != DEFAULT_PROJECT_ID


def test_the_default_project_cannot_be_deactivated(db):
    default = Project.objects.default()
    default.is_active = False
    with pytest.raises(ValidationError, match="stays active"):
        default.full_clean()


# --- keys in projects ---------------------------------------------------------------------------


def test_a_key_created_without_a_project_is_in_the_default_project(alice):
    key, _ = ApiKey.objects.create_key(alice, name="laptop")
    assert key.project_id == DEFAULT_PROJECT_ID


def test_a_key_is_created_only_in_a_project_its_user_belongs_to(alice, bob, apollo):
    key, _ = ApiKey.objects.create_key(alice, project=apollo)
    assert key.project == apollo
    with pytest.raises(ValidationError, match="bob is not a member of project Apollo"):
        ApiKey.objects.create_key(bob, project=apollo)
    assert list(ApiKey.objects.values_list("user__username", flat=True)) == ["alice"]


def test_a_keys_project_cannot_be_changed(alice, apollo):
    key, _ = ApiKey.objects.create_key(alice, name="laptop")
    key.project = apollo  # the instance create_key returned
    with pytest.raises(ValidationError, match="fixed when the key is created"):
        key.save()
    key = ApiKey.objects.get(pk=key.pk)  # one read from the database
    key.project = apollo
    with pytest.raises(ValidationError, match="fixed when the key is created"):
        key.full_clean()
    with pytest.raises(ValidationError, match="fixed when the key is created"):
        key.save()
    assert ApiKey.objects.get(pk=key.pk).project_id == DEFAULT_PROJECT_ID
    key = ApiKey.objects.get(pk=key.pk)
    key.name = "renamed"
    key.save()  # any other change is kept
    assert ApiKey.objects.get(pk=key.pk).name == "renamed"


# --- commands ------------------------------------------------------------------------------------


def test_create_project_prints_its_public_id_alone_on_the_last_line(alice, bob):
    out, _ = run("create_project", "Apollo", "--owner", "alice", "--member", "bob", "--description", "Moon")
    public_id = out.strip().splitlines()[-1]
    project = Project.objects.get(public_id=public_id)
    assert (project.name, project.description, project.is_active) == ("Apollo", "Moon", True)
    assert sorted(project.members.values_list("user__username", "role")) == [("alice", "owner"), ("bob", "member")]


def test_create_project_refuses_an_unknown_user_and_a_taken_name(alice, apollo):
    with pytest.raises(CommandError, match="No user named 'ghost'"):
        run("create_project", "Gemini", "--owner", "ghost")
    with pytest.raises(CommandError, match="A project with this name already exists: choose another name."):
        run("create_project", "Apollo")
    assert list(Project.objects.values_list("name", flat=True)) == ["Apollo", "Default project"]


def test_create_api_key_in_a_project_refuses_a_non_member_and_accepts_a_member(alice, bob, apollo):
    with pytest.raises(CommandError, match=rf"bob is not a member of project Apollo \({apollo.public_id}\)"):
        run("create_api_key", "bob", "--project", apollo.public_id)
    assert ApiKey.objects.count() == 0
    out, err = run("create_api_key", "alice", "--project", apollo.public_id)
    key = ApiKey.objects.get()
    assert key.project == apollo and key.user == alice
    assert "in Apollo" in err


def test_create_api_key_refuses_an_unknown_or_inactive_project(alice, apollo):
    with pytest.raises(CommandError, match="No project with the id 'proj_nope'"):
        run("create_api_key", "alice", "--project", "proj_nope")
    Project.objects.filter(pk=apollo.pk).update(is_active=False)
    with pytest.raises(CommandError, match="is inactive"):
        run("create_api_key", "alice", "--project", apollo.public_id)
    assert ApiKey.objects.count() == 0


def test_create_api_key_without_a_project_uses_the_default_project(alice):
    run("create_api_key", "alice")
    assert ApiKey.objects.get().project_id == DEFAULT_PROJECT_ID


# --- the admin -----------------------------------------------------------------------------------


def test_the_admin_key_form_refuses_a_project_the_user_is_not_in(admin_client, bob, apollo):
    response = admin_client.post("/admin/gateway/apikey/add/", {"user": bob.pk, "project": apollo.pk, "name": "ci",
                                                                "expires_in_days": ""})
    assert response.status_code == 200
    assert "bob is not a member of project Apollo" in response.content.decode()
    assert ApiKey.objects.count() == 0


def test_the_admin_key_form_creates_a_key_in_a_members_project_or_the_default_one(admin_client, alice, apollo):
    admin_client.post("/admin/gateway/apikey/add/", {"user": alice.pk, "project": apollo.pk, "name": "moon",
                                                     "expires_in_days": ""})
    admin_client.post("/admin/gateway/apikey/add/", {"user": alice.pk, "project": "", "name": "plain",
                                                     "expires_in_days": ""})
    assert sorted(ApiKey.objects.values_list("name", "project__name")) == [("moon", "Apollo"),
                                                                          ("plain", "Default project")]


def test_the_admin_shows_a_keys_project_read_only_and_a_post_cannot_move_it(admin_client, alice, apollo):
    key, _ = ApiKey.objects.create_key(alice, name="laptop")
    page = admin_client.get(f"/admin/gateway/apikey/{key.pk}/change/").content.decode()
    assert re.search(r'<div class="readonly">\s*(<a [^>]*>)?Default project', page)
    admin_client.post(f"/admin/gateway/apikey/{key.pk}/change/", {"name": "renamed", "project": apollo.pk,
                                                                  "expires_at_0": "", "expires_at_1": "",
                                                                  "revoked_at_0": "", "revoked_at_1": ""})
    key.refresh_from_db()
    assert (key.name, key.project_id) == ("renamed", DEFAULT_PROJECT_ID)
    listing = admin_client.get("/admin/gateway/apikey/").content.decode()
    assert re.search(r'<td class="field-project[^"]*">Default project</td>', listing)


def test_the_project_list_shows_ids_keys_and_members(admin_client, alice, bob, apollo):
    ProjectMember.objects.create(project=apollo, user=bob)
    ApiKey.objects.create_key(alice, project=apollo)
    ApiKey.objects.create_key(bob, project=apollo)
    page = admin_client.get("/admin/gateway/project/").content.decode()
    rows = {cells[0]: cells[1:] for cells in (
        [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r'<t[hd] class="field-[a-z_]+"[^>]*>(.*?)</t[hd]>',
                                                                row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", page, re.S)) if cells}
    assert rows["Apollo"][0] == apollo.public_id and rows["Apollo"][2:4] == ["2", "alice (owner), bob"]
    assert rows["Default project"][0] == "proj_default" and rows["Default project"][2:4] == ["0", "everyone"]


def test_a_project_is_created_in_the_admin_with_its_members(admin_client, alice):
    response = admin_client.post("/admin/gateway/project/add/", {
        "name": "Gemini", "description": "", "is_active": "on",
        "members-TOTAL_FORMS": "1", "members-INITIAL_FORMS": "0", "members-MIN_NUM_FORMS": "0",
        "members-MAX_NUM_FORMS": "1000", "members-0-user": alice.pk, "members-0-role": "owner"})
    assert response.status_code == 302, response.content
    project = Project.objects.get(name="Gemini")
    assert project.public_id.startswith("proj_") and project.has_member(alice)
    assert list(project.members.values_list("user__username", "role")) == [("alice", "owner")]


@pytest.mark.django_db(transaction=True)
def test_an_inactive_projects_keys_are_refused_until_it_is_active_again(gateway_server, mock_upstream, alice):
    """Deactivating a team's project shuts its keys off at the gateway's next refresh, and in the
    usage API at once; its other keys and its usage stay. Catches: usable() ignoring the project."""
    import openai
    from rest_framework.test import APIClient

    apollo = Project.objects.create_project("Apollo", members=[alice])
    _, in_apollo = ApiKey.objects.create_key(alice, project=apollo)
    elsewhere, in_default = ApiKey.objects.create_key(alice)
    ModelFacade.objects.create(name="gpt-x", provider="openai", base_url=f"{mock_upstream.url}/v1",
                               upstream_model="gpt-4o-mini")
    gateway_server.refresh()

    def gateway_status(raw):
        client = openai.OpenAI(base_url=f"{gateway_server.url}/v1", api_key=raw, max_retries=0, timeout=20)
        try:
            client.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "Hi"}])
            return 200
        except openai.AuthenticationError as error:
            assert "project is inactive" in error.body["message"]
            return 401
        finally:
            client.close()

    def api_status(raw):
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return api.get("/api/me/usage/?period=7d").status_code

    assert (gateway_status(in_apollo), api_status(in_apollo)) == (200, 200)
    apollo.is_active = False
    apollo.save()
    gateway_server.refresh()
    assert (gateway_status(in_apollo), api_status(in_apollo)) == (401, 401)
    assert (gateway_status(in_default), api_status(in_default)) == (200, 200)
    key = ApiKey.objects.get(project=apollo)
    assert (key.status(), key.is_usable(), elsewhere.status()) == ("project inactive", False, "active")
    apollo.is_active = True
    apollo.save()
    gateway_server.refresh()
    assert (gateway_status(in_apollo), api_status(in_apollo)) == (200, 200)


def project_form(**fields):
    return {"name": "Gemini", "description": "", "is_active": "on", "alert_webhook_url": "",
            "alert_webhook_secret": "", "members-TOTAL_FORMS": "0", "members-INITIAL_FORMS": "0",
            "members-MIN_NUM_FORMS": "0", "members-MAX_NUM_FORMS": "1000", **fields}


def test_the_alert_webhook_secret_is_write_only_in_the_admin(admin_client):
    """Set once, never rendered back (not even in the page's HTML), kept when the field is left empty,
    removed only when asked; a URL without a secret is refused (alerts are never sent unsigned)."""
    secret = "whsec-do-not-show-7f3a"
    refused = admin_client.post("/admin/gateway/project/add/", project_form(
        alert_webhook_url="https://hooks.example.com/codevector"))
    assert refused.status_code == 200 and "never sent unsigned" in refused.content.decode()
    made = admin_client.post("/admin/gateway/project/add/", project_form(
        alert_webhook_url="https://hooks.example.com/codevector", alert_webhook_secret=secret))
    assert made.status_code == 302, made.content.decode()[-1500:]
    project = Project.objects.get(name="Gemini")
    assert (project.alert_webhook_url, project.alert_webhook_secret) == ("https://hooks.example.com/codevector", secret)
    change = f"/admin/gateway/project/{project.pk}/change/"
    page = admin_client.get(change).content.decode()
    assert secret not in page and "Alert webhook secret set" in page
    assert secret not in admin_client.get("/admin/gateway/project/").content.decode()
    kept = admin_client.post(change, project_form(alert_webhook_url="https://hooks.example.com/v2"))
    assert kept.status_code == 302
    project.refresh_from_db()
    assert (project.alert_webhook_url, project.alert_webhook_secret) == ("https://hooks.example.com/v2", secret)
    history = admin_client.get(f"/admin/gateway/project/{project.pk}/history/").content.decode()
    assert secret not in history
    cleared = admin_client.post(change, project_form(clear_alert_webhook_secret="on"))
    assert cleared.status_code == 302
    project.refresh_from_db()
    assert (project.alert_webhook_url, project.alert_webhook_secret) == ("", "")


def test_a_keys_status_names_why_it_does_not_work(alice, apollo):
    from datetime import timedelta

    from django.utils import timezone

    key, _ = ApiKey.objects.create_key(alice, project=apollo)  # alice is one of apollo's members
    assert key.status() == "active"
    key.expires_at = timezone.now() - timedelta(seconds=1)
    assert key.status() == "expired"
    key.revoked_at = timezone.now()
    assert key.status() == "revoked"
    fresh, _ = ApiKey.objects.create_key(alice, project=apollo)
    Project.objects.filter(pk=apollo.pk).update(is_active=False)
    assert ApiKey.objects.get(pk=fresh.pk).status() == "project inactive"
    User.objects.filter(pk=alice.pk).update(is_active=False)
    assert ApiKey.objects.get(pk=fresh.pk).status() == "user inactive"
