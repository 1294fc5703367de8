"""Budget alerts: a threshold crossed is decided once, then delivered through a durable outbox.

`decide(now)` reads every active budget with alert thresholds and its current period's exact spend
(per user for a default budget); a threshold is due when spend * 100 >= limit * percent and no alert
for it exists in this period, whenever it was crossed (a budget created or lowered past it alerts
too). Each alert is inserted with its deliveries (one per email address, one per webhook) in one
transaction; a unique constraint makes a second decider, or a decider that retries after a lost
COMMIT, find it decided instead of deciding it again.

`sweep(now)` sends the deliveries that are due: it claims one row at a time (SELECT ... FOR UPDATE
SKIP LOCKED on PostgreSQL; SQLite's IMMEDIATE transactions serialise claims) by moving it one lease
ahead, commits, sends outside any transaction, then records the outcome. A failure is recorded
(failing, attempts, last error) and retried after USAGE_ALERT_RETRY_SECONDS; a sweeper that dies
mid-send leaves its row due again when the lease ends. Delivery is at least once; receivers drop
the rare repeat (a sender killed after the receiver answered, before it recorded "sent") by `id`.

Both run every minute from a django-q2 schedule (usage.tasks), which exists after `migrate`.
"""

import hashlib
import hmac
import json
import logging
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from usage.budgets.book import read_spend
from usage.budgets.periods import budget_period_bounds
from usage.budgets.rules import SCOPES, BudgetRule
from usage.models import AlertDelivery, Budget, BudgetAlert
from usage.money import usd_exact

logger = logging.getLogger(__name__)

EVENT = "budget.threshold_crossed"
SIGNATURE_HEADER = "X-CodeVector-Signature"
TOTAL_PERIOD_KEY = "total"
OWNER_ROLE = "owner"  # gateway.ProjectMember.Role.OWNER (usage never imports gateway)


def is_due(spend_nanos: int, limit_nanos: int, percent: int) -> bool:
    """Spend at or above `percent` of the cap, in integers. No spend alerts nothing (a $0 cap included)."""
    return spend_nanos > 0 and spend_nanos * 100 >= limit_nanos * percent


def period_key(start: datetime | None) -> str:
    return TOTAL_PERIOD_KEY if start is None else start.astimezone(UTC).isoformat()


@dataclass(frozen=True)
class Crossing:
    """One threshold due for one subject of a budget, not yet decided."""

    budget: Budget
    subject_pk: int
    subject: str
    percent: int
    spend_nanos: int
    start: datetime | None
    user: object | None  # who gets the email for a user, key or default budget


def decide(now: datetime | None = None) -> list[BudgetAlert]:
    """Decide every alert due now; returns the alerts this call decided (not those found decided)."""
    now = now or timezone.now()
    budgets = [b for b in Budget.objects.filter(is_active=True).select_related("user", "key__user", "key__project",
                                                                              "project")
               if b.alert_percents]
    decided = []
    for period in sorted({b.period for b in budgets}):
        of_period = [b for b in budgets if b.period == period]
        start, _ = budget_period_bounds(period, now)
        for crossing in crossings(of_period, start, now):
            alert = record(crossing, now)
            if alert is not None:
                decided.append(alert)
    return decided


def crossings(budgets: list[Budget], start: datetime | None, now: datetime) -> list[Crossing]:
    """The thresholds of these budgets (all of one period) due over [start, now) and not yet decided."""
    key = period_key(start)
    spend = read_spend(start, now, [BudgetRule.of(b) for b in budgets])
    decided = set(BudgetAlert.objects.filter(budget__in=budgets, period_key=key).values_list(
        "budget_id", "subject_pk", "threshold_percent"))
    subjects = []  # (budget, subject pk, label, spend, user to email)
    spenders, users = {}, {}
    if any(b.scope == SCOPES.DEFAULT for b in budgets):
        # A user's own active budget of the period replaces the default for them (usage.budgets.rules.applicable).
        own = set(Budget.objects.filter(scope=SCOPES.USER, period=budgets[0].period, is_active=True)
                  .values_list("user_id", flat=True))
        spenders = {uid: nanos for uid, nanos in spend["user"].items() if uid not in own and nanos > 0}
        users = get_user_model().objects.in_bulk(spenders) if spenders else {}
    for budget in budgets:
        if budget.scope == SCOPES.USER:
            subjects.append((budget, budget.user_id, budget.user.get_username(),
                             spend["user"].get(budget.user_id, 0), budget.user))
        elif budget.scope == SCOPES.KEY:
            subjects.append((budget, budget.key_id, budget.key.prefix, spend["key"].get(budget.key_id, 0),
                             budget.key.user))
        elif budget.scope == SCOPES.PROJECT:
            subjects.append((budget, budget.project_id, budget.project.public_id,
                             spend["project"].get(budget.project_id, 0), None))
        else:
            subjects += [(budget, uid, users[uid].get_username(), nanos, users[uid])
                         for uid, nanos in sorted(spenders.items()) if uid in users]
    return [Crossing(budget, pk, label, percent, nanos, start, user)
            for budget, pk, label, nanos, user in subjects
            for percent in sorted(budget.alert_percents)
            if is_due(nanos, budget.limit_nanos, percent) and (budget.pk, pk, percent) not in decided]


def record(crossing: Crossing, now: datetime) -> BudgetAlert | None:
    """Insert the alert and its deliveries in one transaction; None if another decider got there first."""
    budget = crossing.budget
    unique = {"budget": budget, "subject_pk": crossing.subject_pk, "period_key": period_key(crossing.start),
              "threshold_percent": crossing.percent}
    try:
        with transaction.atomic():
            alert = BudgetAlert.objects.create(
                **unique, scope=budget.scope, subject=crossing.subject, period=budget.period,
                period_start=crossing.start, spend_nanos=crossing.spend_nanos, limit_nanos=budget.limit_nanos,
                decided_at=now)
            AlertDelivery.objects.bulk_create(
                [AlertDelivery(alert=alert, channel=channel, target=target, project=project, next_attempt_at=now,
                               created_at=now)
                 for channel, target, project in destinations(budget, crossing.user)])
    except IntegrityError:
        if BudgetAlert.objects.filter(**unique).exists():  # decided by another decider meanwhile
            return None
        raise
    logger.info("budget alert %s decided: %s %s budget at %s%% (%s of %s USD)", alert.event_id, alert.subject,
                alert.period, alert.threshold_percent, usd_exact(alert.spend_nanos), usd_exact(alert.limit_nanos))
    return alert


def destinations(budget: Budget, user) -> list[tuple[str, str, object | None]]:
    """(channel, target, project whose webhook it is) of one alert: the user (user, key and default
    budgets) or the project's owners (project budgets) and USAGE_ALERT_EMAILS by email; the global
    webhook, and the webhook of the budget's project (for a key budget, the key's project)."""
    if budget.scope == SCOPES.PROJECT:
        owners = budget.project.members.filter(role=OWNER_ROLE, user__is_active=True).select_related(
            "user").order_by("user_id")
        addresses = [m.user.email for m in owners]
    else:
        addresses = [user.email] if user is not None else []
    found, seen = [], set()
    for address in [*addresses, *settings.USAGE_ALERT_EMAILS]:
        if address and address.lower() not in seen:
            seen.add(address.lower())
            found.append((AlertDelivery.Channel.EMAIL, address, None))
    if settings.USAGE_ALERT_WEBHOOK_URL:
        found.append((AlertDelivery.Channel.WEBHOOK, settings.USAGE_ALERT_WEBHOOK_URL, None))
    project = budget.project if budget.scope == SCOPES.PROJECT else budget.key.project \
        if budget.scope == SCOPES.KEY else None
    if project is not None and project.alert_webhook_url and project.alert_webhook_url != \
            settings.USAGE_ALERT_WEBHOOK_URL:
        found.append((AlertDelivery.Channel.WEBHOOK, project.alert_webhook_url, project))
    return found


# --- delivery ------------------------------------------------------------------------------------


def webhook_body(alert: BudgetAlert) -> bytes:
    """The JSON every webhook receives, the same bytes on every try."""
    start = alert.period_start
    return json.dumps({
        "event": EVENT,
        "id": alert.event_id,
        "scope": alert.scope,
        "subject": alert.subject,
        "period": alert.period,
        "period_start": timezone.localtime(start, timezone.get_default_timezone()).isoformat() if start else None,
        "threshold_percent": alert.threshold_percent,
        "spend_usd": usd_exact(alert.spend_nanos),
        "limit_usd": usd_exact(alert.limit_nanos),
    }, separators=(",", ":")).encode()


def signature(body: bytes, secret: str) -> str:
    """The X-CodeVector-Signature header's value: sha256=<hex HMAC-SHA256 of the raw body>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def email_text(alert: BudgetAlert) -> tuple[str, str]:
    whose = {SCOPES.USER: f"{alert.subject}'s", SCOPES.DEFAULT: f"{alert.subject}'s",
             SCOPES.KEY: f"API key {alert.subject}'s", SCOPES.PROJECT: f"project {alert.subject}'s"}[alert.scope]
    since = (f"since {timezone.localtime(alert.period_start, timezone.get_default_timezone()):%Y-%m-%d %H:%M %Z}"
             if alert.period_start else "in total")
    subject = f"Budget alert: {whose} {alert.period} budget reached {alert.threshold_percent}%"
    body = (f"{whose[:1].upper()}{whose[1:]} {alert.period} budget has reached {alert.threshold_percent}% of its cap.\n\n"
            f"Spent {since}: ${usd_exact(alert.spend_nanos)}\n"
            f"Cap: ${usd_exact(alert.limit_nanos)}\n\n"
            f"Requests are refused once the cap is reached; ask an administrator to raise it.\n"
            f"Alert id: {alert.event_id}\n")
    return subject, body


class NoRedirects(urllib.request.HTTPRedirectHandler):
    """A webhook answers 2xx or it failed: a redirect is not followed (urllib would resend a POST as a GET)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


WEBHOOK_OPENER = urllib.request.build_opener(NoRedirects)


class DeliveryFailed(Exception):
    pass


def send_email(delivery: AlertDelivery) -> None:
    subject, body = email_text(delivery.alert)
    if EmailMessage(subject, body, settings.DEFAULT_FROM_EMAIL, [delivery.target]).send() != 1:
        raise DeliveryFailed("the email backend sent nothing")


def webhook_secret(delivery: AlertDelivery) -> str:
    secret = delivery.project.alert_webhook_secret if delivery.project_id else settings.USAGE_ALERT_WEBHOOK_SECRET
    if not secret:
        raise DeliveryFailed(f"project {delivery.project.public_id}'s alert webhook has no secret: set one in its "
                             "admin page (alerts are never sent unsigned)")
    return secret


def post_webhook(delivery: AlertDelivery) -> None:
    body = webhook_body(delivery.alert)
    request = urllib.request.Request(delivery.target, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "CodeVector-alerts/1",
        SIGNATURE_HEADER: signature(body, webhook_secret(delivery))})
    try:
        with WEBHOOK_OPENER.open(request, timeout=settings.USAGE_ALERT_WEBHOOK_TIMEOUT_SECONDS) as response:
            response.read(65536)
    except urllib.error.HTTPError as exc:
        answer = exc.read(200).decode("utf-8", "replace")
        raise DeliveryFailed(f"the webhook answered {exc.code} {exc.reason}: {answer}") from None


SENDERS = {AlertDelivery.Channel.EMAIL: send_email, AlertDelivery.Channel.WEBHOOK: post_webhook}
DUE_STATUSES = (AlertDelivery.Status.PENDING, AlertDelivery.Status.FAILING)


def claim(now: datetime) -> AlertDelivery | None:
    """Take the next due delivery for one lease; None when none is due."""
    token = secrets.token_hex(16)
    with transaction.atomic():
        row = (AlertDelivery.objects.select_for_update(skip_locked=True)
               .filter(status__in=DUE_STATUSES, next_attempt_at__lte=now)
               .order_by("next_attempt_at", "pk").values("pk", "attempts").first())
        if row is None:
            return None
        # Conditional on what was read, so a claim holds even where FOR UPDATE does not exist.
        taken = AlertDelivery.objects.filter(pk=row["pk"], attempts=row["attempts"], next_attempt_at__lte=now).update(
            attempts=F("attempts") + 1, claim_token=token,
            next_attempt_at=now + timedelta(seconds=settings.USAGE_ALERT_LEASE_SECONDS))
    if not taken:
        return None
    return AlertDelivery.objects.select_related("alert", "project").get(pk=row["pk"])


def retry_delay(attempts: int) -> timedelta:
    delays = settings.USAGE_ALERT_RETRY_SECONDS
    return timedelta(seconds=delays[min(attempts, len(delays)) - 1])


def deliver(delivery: AlertDelivery, now: datetime) -> bool:
    """Send one claimed delivery and record the outcome; True if it was sent."""
    try:
        SENDERS[delivery.channel](delivery)
    except Exception as exc:  # whatever went wrong is recorded and retried, never lost
        error = str(exc) if isinstance(exc, DeliveryFailed) else f"{type(exc).__name__}: {exc}"
        AlertDelivery.objects.filter(pk=delivery.pk, claim_token=delivery.claim_token).update(
            status=AlertDelivery.Status.FAILING, last_error=error[:2000], claim_token="",
            next_attempt_at=now + retry_delay(delivery.attempts))
        logger.warning("budget alert %s: %s delivery %s failed (attempt %s): %s", delivery.alert.event_id,
                       delivery.channel, delivery.pk, delivery.attempts, error)
        return False
    AlertDelivery.objects.filter(pk=delivery.pk, claim_token=delivery.claim_token).update(
        status=AlertDelivery.Status.SENT, sent_at=timezone.now(), last_error="", claim_token="")
    return True


@dataclass(frozen=True)
class SweepResult:
    sent: int = 0
    failed: int = 0


def sweep(now: datetime | None = None) -> SweepResult:
    """Send every delivery due now, one claim at a time (any number of sweepers may run at once).
    `now` fixes the clock (tests); by default each claim reads it, so a long sweep's leases hold."""
    sent = failed = 0
    while (delivery := claim(now or timezone.now())) is not None:
        if deliver(delivery, now or timezone.now()):
            sent += 1
        else:
            failed += 1
    return SweepResult(sent, failed)


def retry_now(deliveries) -> int:
    """Make these deliveries (not yet sent, not being sent) due at once: the admin's "retry now". A
    row being sent keeps its claim, or its sender could not record the outcome and it would go twice."""
    return deliveries.filter(status__in=DUE_STATUSES, claim_token="").update(next_attempt_at=timezone.now())
