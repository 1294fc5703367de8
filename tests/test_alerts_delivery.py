"""usage.budgets.alerts.sweep: budget alerts delivered through the outbox to a real SMTP server on loopback
(aiosmtpd, through Django's SMTP backend) and to loopback webhook receivers that check the
signature. Each alert arrives once per destination however often decide and sweep run; failures
are recorded and retried; a worker killed after deciding, or while sending, sends after restart,
once; two sweepers at once never send one delivery twice."""

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth.models import User
from django.core.mail import get_connection, send_mail
from django.db import connection
from django.utils import timezone

from gateway.models import ApiKey, Project
from tests.conftest import ThreadServer
from tests.support.servers import ROOT, listening_socket, port_of
from usage.budgets import alerts
from usage.budgets.setting import set_budget
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many
from usage.models import AlertDelivery, BudgetAlert

T0 = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)  # when the spend is recorded
NOW = T0 + timedelta(minutes=1)  # when decide and sweep run (a spend counts over [start, now))
GLOBAL_SECRET = "global-secret-for-tests"
PROJECT_SECRET = "atlas-secret-for-tests"
BODY_KEYS = ["event", "id", "scope", "subject", "period", "period_start", "threshold_percent", "spend_usd",
             "limit_usd"]


# --- the receivers ------------------------------------------------------------------------------


class Mailbox:
    """aiosmtpd's handler: keeps every message accepted; refuses the next `refusals` with a 451."""

    def __init__(self):
        self.messages = []  # (recipients, parsed message)
        self.refusals = 0

    async def handle_DATA(self, server, session, envelope):
        if self.refusals:
            self.refusals -= 1
            return "451 Requested action aborted: try again later"
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=policy.default)))
        return "250 Message accepted for delivery"

    def received(self):
        return sorted((tuple(to), m["Subject"]) for to, m in self.messages)


@pytest.fixture
def smtp(settings):
    """A real SMTP server on loopback; Django's SMTP backend pointed at it."""
    from aiosmtpd.smtp import SMTP

    loop_thread, mailbox, sock = ThreadServer(), Mailbox(), listening_socket()
    server = loop_thread.call(loop_thread.loop.create_server(lambda: SMTP(mailbox, hostname="localhost"), sock=sock))
    mailbox.port = port_of(sock)
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", mailbox.port, 5
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.DEFAULT_FROM_EMAIL = "alerts@codevector.test"
    yield mailbox
    server.close()
    loop_thread.close()


class WebhookReceiver:
    """A loopback webhook that checks X-CodeVector-Signature with its secret (401 if wrong), answers
    500 to the first `failures` requests, holds requests unanswered while `hanging`, and keeps the
    bodies it accepted, one per id (a repeat goes to `duplicates`, as a receiver would drop it)."""

    def __init__(self, secret: str):
        self.secret = secret.encode()
        self.failures = 0
        self.hanging = False
        self.arrived, self.release = threading.Event(), threading.Event()
        self.requests = []  # (signature valid, raw body) of every request
        self.accepted, self.duplicates = [], []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                receiver.handle(self)

            def log_message(self, *args):
                pass

        sock = listening_socket()
        self.server = ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = sock
        self.url = f"http://127.0.0.1:{port_of(sock)}/hooks/budget"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, request):
        body = request.rfile.read(int(request.headers["Content-Length"]))
        expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        valid = hmac.compare_digest(request.headers.get("X-CodeVector-Signature", ""), expected)
        with self.lock:
            self.requests.append((valid, body))
            failing, self.failures = self.failures > 0, max(self.failures - 1, 0)
        if not valid:
            return self.answer(request, 401, b"bad signature")
        if self.hanging:  # the sender is killed meanwhile: nothing is answered, nothing accepted
            self.arrived.set()
            self.release.wait(30)
            return
        if failing:
            return self.answer(request, 500, b"try again later")
        event = json.loads(body)
        with self.lock:
            (self.duplicates if any(e["id"] == event["id"] for e in self.accepted) else self.accepted).append(event)
        self.answer(request, 200, b"ok")

    @staticmethod
    def answer(request, status, text):
        request.send_response(status)
        request.send_header("Content-Length", str(len(text)))
        request.end_headers()
        request.wfile.write(text)

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made = []

    def make(secret):
        made.append(WebhookReceiver(secret))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def post(url, body: bytes, signature: str) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST", headers={"X-CodeVector-Signature": signature})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


# --- the receivers' own checks (no database) ----------------------------------------------------


@pytest.mark.dbless
def test_the_signature_is_hex_hmac_sha256_of_the_raw_body():
    """RFC 4231-style known answer (HMAC-SHA256 of the pangram with key "key"). Catches another
    digest, a digest of something else than the bytes sent, base64 instead of hex, a missing prefix."""
    assert alerts.signature(b"The quick brown fox jumps over the lazy dog", "key") == \
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"


@pytest.mark.dbless
def test_the_webhook_receiver_accepts_a_signed_body_once_and_refuses_a_forged_one(receivers):
    """The receiver the tests below trust: a wrong signature is refused, a repeat is a duplicate."""
    receiver = receivers("s3cret")
    body = b'{"id":"alrt_1"}'
    good = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert post(receiver.url, body, good) == 200
    assert post(receiver.url, body, "sha256=" + hmac.new(b"other", body, hashlib.sha256).hexdigest()) == 401
    assert post(receiver.url, body.replace(b"1", b"2"), good) == 401
    assert post(receiver.url, body, good) == 200
    assert receiver.accepted == [{"id": "alrt_1"}] and receiver.duplicates == [{"id": "alrt_1"}]
    assert [valid for valid, _ in receiver.requests] == [True, False, False, True]


@pytest.mark.dbless
def test_the_smtp_server_receives_what_djangos_smtp_backend_sends(smtp):
    assert type(get_connection()).__module__ == "django.core.mail.backends.smtp"
    assert send_mail("Hello", "Body text", "a@codevector.test", ["b@example.com"]) == 1
    smtp.refusals = 1
    with pytest.raises(Exception, match="451"):
        send_mail("Refused", "Body", "a@codevector.test", ["b@example.com"])
    assert smtp.received() == [(("b@example.com",), "Hello")]
    assert smtp.messages[0][1].get_content() == "Body text\r\n"  # as sent on the wire


# --- delivery -----------------------------------------------------------------------------------


def spend(user, facade, nanos, at=T0, key=None):
    record_many([UsageDelta(id=uuid.uuid4().hex, user_id=user.pk, key_id=key.pk if key else None,
                            facade_id=facade.pk, at=at, cost_nanos=nanos)])


def run_both(times=3, now=NOW):
    for _ in range(times):
        alerts.decide(now)
        alerts.sweep(now)


@pytest.fixture
def atlas(alice, bob, settings, receivers):
    """Project Atlas (owners alice and olga, member bob) with its own webhook; a global webhook and
    an ops address beside."""
    settings.USAGE_ALERT_EMAILS = ["ops@example.com"]
    global_hook, project_hook = receivers(GLOBAL_SECRET), receivers(PROJECT_SECRET)
    settings.USAGE_ALERT_WEBHOOK_URL, settings.USAGE_ALERT_WEBHOOK_SECRET = global_hook.url, GLOBAL_SECRET
    olga = User.objects.create_user("olga", "olga@example.com")
    project = Project.objects.create_project("Atlas", owners=[alice, olga], members=[bob])
    project.alert_webhook_url, project.alert_webhook_secret = project_hook.url, PROJECT_SECRET
    project.save()
    return project, global_hook, project_hook


def test_the_50_and_80_percent_alerts_arrive_exactly_once_each(atlas, bob, gpt, smtp, caplog):
    """A project budget of $2 alerting at 50% and 80%, decide and sweep run three times at every
    step. Catches: a delivery sent again by a later sweep (status not recorded), an alert decided
    again, the project's webhook signed with the global secret (its receiver refuses it), a body
    not exactly as documented, a secret in the logs."""
    project, global_hook, project_hook = atlas
    key, _ = ApiKey.objects.create_key(bob, project=project)
    set_budget(project_id=project.public_id, period="total", amount_usd=Decimal(2), warn_percent=None, active=True,
               alert_percents=[50, 80])
    spend(bob, gpt, 400_000_000, key=key)
    run_both()
    spend(bob, gpt, 600_000_000, key=key)  # $1.000000000: 50% exactly
    run_both()
    spend(bob, gpt, 599_999_999, key=key)  # 79.99999995%: not yet
    run_both()
    spend(bob, gpt, 1, key=key)  # $1.600000000: 80%
    run_both()

    fifty, eighty = BudgetAlert.objects.order_by("threshold_percent")
    for hook in (global_hook, project_hook):
        assert all(valid for valid, _ in hook.requests) and hook.duplicates == []
        assert [list(event) for event in hook.accepted] == [BODY_KEYS, BODY_KEYS]
        assert hook.accepted == [
            {"event": "budget.threshold_crossed", "id": fifty.event_id, "scope": "project",
             "subject": project.public_id, "period": "total", "period_start": None, "threshold_percent": 50,
             "spend_usd": "1.000000000", "limit_usd": "2.000000000"},
            {"event": "budget.threshold_crossed", "id": eighty.event_id, "scope": "project",
             "subject": project.public_id, "period": "total", "period_start": None, "threshold_percent": 80,
             "spend_usd": "1.600000000", "limit_usd": "2.000000000"}]
    subject = f"Budget alert: project {project.public_id}'s total budget reached {{}}%"
    assert smtp.received() == sorted((to, subject.format(p)) for to in
                                     (("alice@example.com",), ("olga@example.com",), ("ops@example.com",))
                                     for p in (50, 80))
    texts = {m["Subject"]: m.get_content().replace("\r\n", "\n") for to, m in smtp.messages
             if to == ["olga@example.com"]}
    assert "Spent in total: $1.600000000\nCap: $2.000000000\n" in texts[subject.format(80)]
    assert f"Alert id: {eighty.event_id}" in texts[subject.format(80)]
    assert set(AlertDelivery.objects.values_list("status", "attempts")) == {("sent", 1)}
    assert AlertDelivery.objects.count() == 10
    assert GLOBAL_SECRET not in caplog.text and PROJECT_SECRET not in caplog.text


def test_a_receiver_that_fails_twice_gets_the_alert_on_the_third_try_once(alice, gpt, settings, receivers, caplog):
    """Catches: no retry after a failure, a retry before its backoff (USAGE_ALERT_RETRY_SECONDS), a
    failure not recorded (status, attempts, last error), a delivered alert retried again."""
    alice.email = ""
    alice.save()
    hook = receivers(GLOBAL_SECRET)
    hook.failures = 2
    settings.USAGE_ALERT_WEBHOOK_URL, settings.USAGE_ALERT_WEBHOOK_SECRET = hook.url, GLOBAL_SECRET
    settings.USAGE_ALERT_RETRY_SECONDS = [10, 20]
    set_budget(username="alice", period="total", amount_usd=Decimal(1), warn_percent=None, active=True,
               alert_percents=[50])
    spend(alice, gpt, 500_000_000)
    alerts.decide(NOW)
    delivery = AlertDelivery.objects.get()

    def state():
        delivery.refresh_from_db()
        return delivery.status, delivery.attempts, delivery.next_attempt_at, len(hook.requests), len(hook.accepted)

    assert alerts.sweep(NOW) == alerts.SweepResult(sent=0, failed=1)
    assert state() == ("failing", 1, NOW + timedelta(seconds=10), 1, 0)
    assert delivery.last_error == "the webhook answered 500 Internal Server Error: try again later"
    assert alerts.sweep(NOW + timedelta(seconds=9)) == alerts.SweepResult()
    assert alerts.sweep(NOW + timedelta(seconds=10)) == alerts.SweepResult(sent=0, failed=1)
    assert state() == ("failing", 2, NOW + timedelta(seconds=30), 2, 0)
    assert alerts.sweep(NOW + timedelta(seconds=29)) == alerts.SweepResult()
    assert alerts.sweep(NOW + timedelta(seconds=30)) == alerts.SweepResult(sent=1, failed=0)
    assert state()[:2] + state()[3:] == ("sent", 3, 3, 1)
    assert delivery.last_error == "" and delivery.sent_at is not None
    assert alerts.sweep(NOW + timedelta(days=1)) == alerts.SweepResult()
    assert len({body for _, body in hook.requests}) == 1  # the same bytes on every try
    assert hook.duplicates == [] and hook.accepted[0]["id"] == BudgetAlert.objects.get().event_id
    assert GLOBAL_SECRET not in caplog.text


def test_a_failing_mail_server_is_recorded_and_retried(alice, gpt, smtp, settings):
    settings.USAGE_ALERT_RETRY_SECONDS = [60]
    set_budget(username="alice", period="total", amount_usd=Decimal(1), warn_percent=None, active=True,
               alert_percents=[50])
    spend(alice, gpt, 500_000_000)
    smtp.refusals = 1
    alerts.decide(NOW)
    assert alerts.sweep(NOW) == alerts.SweepResult(failed=1)
    delivery = AlertDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("failing", 1) and "451" in delivery.last_error
    assert alerts.sweep(NOW + timedelta(seconds=60)) == alerts.SweepResult(sent=1)
    assert smtp.received() == [(("alice@example.com",), "Budget alert: alice's total budget reached 50%")]


def subprocess_env(database_url, smtp, hook):
    return {**os.environ, "DATABASE_URL": database_url, "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(smtp.port), "USAGE_ALERT_WEBHOOK_URL": hook.url,
            "USAGE_ALERT_WEBHOOK_SECRET": GLOBAL_SECRET}


def python(code, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import django; django.setup()\n" + code], cwd=ROOT, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


THE_TASK = "from usage.tasks import send_budget_alerts\nprint(send_budget_alerts())"


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_between_deciding_and_sending_sends_after_restart_once(test_database_url, alice, gpt,
                                                                                 smtp, receivers):
    """Catches: deliveries kept in memory between decide and sweep (lost with the worker), or the
    decision not durable before sending (a restart would decide again and send twice)."""
    hook = receivers(GLOBAL_SECRET)
    env = subprocess_env(test_database_url, smtp, hook)
    set_budget(username="alice", period="total", amount_usd=Decimal(1), warn_percent=None, active=True,
               alert_percents=[50])
    spend(alice, gpt, 500_000_000, at=timezone.now())
    worker = python("import time\nfrom usage.budgets.alerts import decide\nprint(len(decide()), flush=True)\ntime.sleep(60)",
                    env)
    assert worker.stdout.readline().strip() == "1"
    worker.send_signal(signal.SIGKILL)
    assert worker.wait(30) == -signal.SIGKILL
    assert (hook.requests, smtp.messages) == ([], [])
    assert set(AlertDelivery.objects.values_list("status", "attempts")) == {("pending", 0)}

    out, err = python(THE_TASK, env).communicate(timeout=60)  # the restarted worker's scheduled task
    assert out.strip() == "Decided 0 budget alert(s); 2 delivery(ies) sent, 0 failed.", err
    out, err = python(THE_TASK, env).communicate(timeout=60)
    assert out.strip() == "Decided 0 budget alert(s); 0 delivery(ies) sent, 0 failed.", err
    assert [e["id"] for e in hook.accepted] == [BudgetAlert.objects.get().event_id] and hook.duplicates == []
    assert smtp.received() == [(("alice@example.com",), "Budget alert: alice's total budget reached 50%")]


@pytest.mark.django_db(transaction=True)
def test_a_sweeper_killed_mid_send_is_retried_after_its_lease_once(test_database_url, alice, gpt, smtp, receivers,
                                                                    settings):
    """The sweeper dies while the webhook holds its request. Catches: a claimed row never retried
    (a dead sweeper's claim kept for ever), or retried before its lease ends (a slow but live
    sender would then be doubled)."""
    alice.email = ""
    alice.save()
    hook = receivers(GLOBAL_SECRET)
    hook.hanging = True
    settings.USAGE_ALERT_WEBHOOK_URL, settings.USAGE_ALERT_WEBHOOK_SECRET = hook.url, GLOBAL_SECRET
    set_budget(username="alice", period="total", amount_usd=Decimal(1), warn_percent=None, active=True,
               alert_percents=[50])
    spend(alice, gpt, 500_000_000, at=timezone.now())
    alerts.decide()
    sweeper = python("from usage.budgets.alerts import sweep\nsweep()", subprocess_env(test_database_url, smtp, hook))
    assert hook.arrived.wait(30), sweeper.communicate(timeout=5)
    sweeper.send_signal(signal.SIGKILL)
    sweeper.wait(30)
    hook.hanging = False
    hook.release.set()
    delivery = AlertDelivery.objects.get()
    assert (delivery.status, delivery.attempts, hook.accepted) == ("pending", 1, [])
    assert alerts.sweep() == alerts.SweepResult()  # its lease holds
    after_the_lease = delivery.next_attempt_at
    assert after_the_lease > timezone.now() + timedelta(seconds=settings.USAGE_ALERT_LEASE_SECONDS - 30)
    assert alerts.sweep(after_the_lease) == alerts.SweepResult(sent=1)
    assert alerts.sweep(after_the_lease + timedelta(days=1)) == alerts.SweepResult()
    assert [e["id"] for e in hook.accepted] == [BudgetAlert.objects.get().event_id] and hook.duplicates == []
    assert len(hook.requests) == 2


@pytest.mark.django_db(transaction=True)
def test_two_sweepers_at_once_never_send_a_delivery_twice(gpt, settings, receivers):
    """Twelve users over a default budget, four sweepers at once. Catches: a claim that is not
    atomic (no FOR UPDATE SKIP LOCKED and no conditional update): rows sent twice."""
    hook = receivers(GLOBAL_SECRET)
    settings.USAGE_ALERT_WEBHOOK_URL, settings.USAGE_ALERT_WEBHOOK_SECRET = hook.url, GLOBAL_SECRET
    set_budget(period="total", amount_usd=Decimal(1), warn_percent=None, active=True, alert_percents=[50])
    for n in range(12):
        spend(User.objects.create_user(f"user{n}"), gpt, 500_000_000)
    assert len(alerts.decide(NOW)) == 12
    results, errors = [], []
    start = threading.Barrier(4)

    def sweeper():
        try:
            start.wait(10)
            results.append(alerts.sweep(NOW))
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sweeper) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sum(r.sent for r in results) == 12 and sum(r.failed for r in results) == 0
    assert len(hook.requests) == 12 and hook.duplicates == []
    assert sorted(e["subject"] for e in hook.accepted) == sorted(f"user{n}" for n in range(12))
    assert set(AlertDelivery.objects.values_list("status", "attempts")) == {("sent", 1)}


def test_the_admin_shows_deliveries_and_retries_failing_ones_now(alice, gpt, settings, client):
    settings.USAGE_ALERT_RETRY_SECONDS = [3600]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2  # nothing listens
    set_budget(username="alice", period="total", amount_usd=Decimal(1), warn_percent=None, active=True,
               alert_percents=[50])
    spend(alice, gpt, 500_000_000)
    alerts.decide(NOW)
    alerts.sweep(NOW)
    delivery = AlertDelivery.objects.get()
    client.force_login(User.objects.create_superuser("root", "root@example.com", None))
    page = client.get("/admin/usage/alertdelivery/").content.decode()
    assert "failing (retried)" in page and "ConnectionRefusedError" in page and "alice@example.com" in page
    assert "0.500000000" in client.get(f"/admin/usage/budgetalert/{delivery.alert_id}/change/").content.decode()
    client.post("/admin/usage/alertdelivery/", {"action": "retry_selected_now", "_selected_action": [delivery.pk]})
    delivery.refresh_from_db()
    assert delivery.next_attempt_at <= timezone.now() and delivery.status == "failing"
