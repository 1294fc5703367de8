from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from usage.counters import COUNTER_DEFINITIONS
from usage.money import nanos_to_usd


BIGINT_MAX = 2**63 - 1


class CounterField(models.BigIntegerField):
    """A ledger counter: a 64-bit integer that never turns into anything else.

    PostgreSQL refuses a bigint sum past 2**63 (an error, dead-lettered by the ledger). SQLite
    silently makes such a sum a float, inexact from then on; on SQLite this field's CHECK refuses
    any value that is not an integer, so the write fails there too instead."""

    def db_check(self, connection):
        if connection.vendor == "sqlite":
            return f"typeof(\"{self.column}\") = 'integer'"
        return super().db_check(connection)


class UsageBucket(models.Model):
    """One row of counters per (bucket start, user, facade); the four levels share this shape.

    Only the 5-minute table is written by requests (usage.ledger); coarser levels are written by
    the rollups and the late-data path. Rows are never cascade-deleted: usage history outlives
    a deactivated user or facade.
    """

    bucket_start = models.DateTimeField()
    # No index of their own for user and key: each level's (user, bucket_start) and (key,
    # bucket_start) indexes below serve every lookup one would (and the UPSERT of a new bucket
    # row writes two index entries fewer).
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", db_index=False)
    # The API key that made the requests; usage from before per-key accounting (and deltas written
    # without a key) belongs to a reserved, never-usable key of the user (usage.sql).
    key = models.ForeignKey("gateway.ApiKey", on_delete=models.PROTECT, related_name="+", db_index=False)
    facade = models.ForeignKey("gateway.ModelFacade", on_delete=models.PROTECT, related_name="+")
    # ...and one CounterField per counter of usage.counters, added below.

    class Meta:
        abstract = True

    def __str__(self):
        return f"{self.bucket_start:%Y-%m-%d %H:%M} user={self.user_id} key={self.key_id} facade={self.facade_id}"


for _counter in COUNTER_DEFINITIONS:  # the levels inherit them: abstract fields are copied at subclassing
    # db_default too: raw INSERTs that name fewer counters (bench/dashboard.py) get 0, as rows that
    # existed before a counter was added do.
    UsageBucket.add_to_class(_counter.name, CounterField(default=0, db_default=0, help_text=_counter.help))


def level_meta(level: str, name: str) -> type:
    """The Meta of one level: its table, the unique key the ledger's ON CONFLICT names, and an index
    each for per-user and per-key range reads (network-wide range reads use the unique index,
    bucket_start first)."""

    class Meta:
        db_table = f"usage_bucket_{level}"
        verbose_name = name
        constraints = [models.UniqueConstraint(fields=["bucket_start", "user", "key", "facade"],
                                               name=f"usage_{level}_bucket")]
        indexes = [models.Index(fields=["user", "bucket_start"], name=f"usage_{level}_user"),
                   models.Index(fields=["key", "bucket_start"], name=f"usage_{level}_apikey")]

    return Meta


class FiveMinuteUsage(UsageBucket):
    class Meta(level_meta("5min", "5-minute usage")):
        # The one permission every usage page and the staff side of the usage API ask for.
        permissions = [("view_usage_dashboard", "Can view usage dashboards and the usage API for every user")]


class HourlyUsage(UsageBucket):
    Meta = level_meta("hour", "hourly usage")


class DailyUsage(UsageBucket):
    Meta = level_meta("day", "daily usage")


class MonthlyUsage(UsageBucket):
    Meta = level_meta("month", "monthly usage")


class AppliedDelta(models.Model):
    """Ids of deltas replayed from the disk buffer, written in the replay's own transaction so a
    second replay skips them (exactly once). Pruned after USAGE_APPLIED_IDS_DAYS."""

    delta_id = models.CharField(max_length=64, unique=True)
    applied_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "usage_applied_delta"
        verbose_name = "applied buffered delta"


class BufferEventQuerySet(models.QuerySet):
    def totals(self, start=None, end=None) -> dict[str, int]:
        """Each kind's count summed over [start, end) (open ends: everything), kinds with none left out."""
        events = self
        if start is not None:
            events = events.filter(at__gte=start)
        if end is not None:
            events = events.filter(at__lt=end)
        rows = events.values_list("kind").annotate(total=models.Sum("count")).order_by("kind")
        return {kind: total for kind, total in rows if total}


class BufferEvent(models.Model):
    """What degraded mode did, for the usage page's banner and /readyz: deltas replayed from the
    buffer, deltas lost (logged for replay), requests refused for want of anywhere to record them.
    Written by each gateway process once the database answers again."""

    class Kind(models.TextChoices):
        DRAINED = "drained", "replayed from the buffer"
        LOST = "lost", "lost (logged for drain_usage_buffer --from-log)"
        REFUSED = "refused", "requests refused (503)"
        REJECTED = "rejected", "refused by the database (dead-lettered for drain_usage_buffer --from-log)"

    kind = models.CharField(max_length=10, choices=Kind.choices)
    count = models.BigIntegerField()
    host = models.CharField(max_length=255)
    pid = models.IntegerField()
    at = models.DateTimeField(db_index=True)

    objects = BufferEventQuerySet.as_manager()

    class Meta:
        db_table = "usage_buffer_event"
        ordering = ["-at"]


class Budget(models.Model):
    """A spend cap for one user, one API key, one project, or the default of its period for every
    user without their own. `scope` says which; exactly the matching subject is set.

    A user's own budget of a period replaces the default of that period for them; key and project
    budgets apply on top of those. A request is refused when any budget that applies is exhausted."""

    class Scope(models.TextChoices):
        USER = "user", "user"
        KEY = "key", "API key"
        PROJECT = "project", "project"
        DEFAULT = "default", "default (every user without their own)"

    class Period(models.TextChoices):
        DAILY = "daily", "daily"
        WEEKLY = "weekly", "weekly (from Monday)"
        MONTHLY = "monthly", "monthly (calendar month)"
        TOTAL = "total", "total (never resets)"

    scope = models.CharField(max_length=10, choices=Scope.choices)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True,
                             related_name="budgets", help_text="For a user budget.")
    # Keys and projects are the gateway's (usage refers to them by name, never imports gateway).
    key = models.ForeignKey("gateway.ApiKey", on_delete=models.CASCADE, null=True, blank=True,
                            related_name="budgets", help_text="For an API key budget.")
    project = models.ForeignKey("gateway.Project", on_delete=models.CASCADE, null=True, blank=True,
                                related_name="budgets", help_text="For a project budget.")
    period = models.CharField(max_length=10, choices=Period.choices)
    limit_nanos = models.BigIntegerField(help_text="The cap, in integer nanodollars.")
    warn_percent = models.PositiveSmallIntegerField(null=True, blank=True,
                                                    help_text="Warn once spend passes this share of the cap.")
    # Percentages of the cap at which an alert is sent, once per budget period (usage.budgets.alerts); empty: none.
    alert_percents = models.JSONField(default=list, blank=True,
                                      help_text="Alert when spend reaches these percents of the cap, e.g. [50, 80].")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    SUBJECT_FIELDS = {Scope.USER: "user", Scope.KEY: "key", Scope.PROJECT: "project"}

    class Meta:
        db_table = "usage_budget"
        ordering = ["scope", "period", "id"]
        constraints = [
            models.UniqueConstraint(fields=["user", "period"], condition=models.Q(scope="user"),
                                    name="usage_budget_one_per_user_period",
                                    violation_error_message="There is already a budget for this user and period."),
            models.UniqueConstraint(fields=["key", "period"], condition=models.Q(scope="key"),
                                    name="usage_budget_one_per_key_period",
                                    violation_error_message="There is already a budget for this API key and period."),
            models.UniqueConstraint(fields=["project", "period"], condition=models.Q(scope="project"),
                                    name="usage_budget_one_per_project_period",
                                    violation_error_message="There is already a budget for this project and period."),
            models.UniqueConstraint(fields=["period"], condition=models.Q(scope="default"),
                                    name="usage_budget_one_default_per_period",
                                    violation_error_message="There is already a default budget for this period."),
            models.CheckConstraint(
                condition=(models.Q(scope="user", user__isnull=False, key__isnull=True, project__isnull=True)
                           | models.Q(scope="key", user__isnull=True, key__isnull=False, project__isnull=True)
                           | models.Q(scope="project", user__isnull=True, key__isnull=True, project__isnull=False)
                           | models.Q(scope="default", user__isnull=True, key__isnull=True, project__isnull=True)),
                name="usage_budget_scope_names_its_subject"),
            models.CheckConstraint(condition=models.Q(limit_nanos__gte=0), name="usage_budget_limit_not_negative"),
            models.CheckConstraint(condition=models.Q(warn_percent__isnull=True) | models.Q(warn_percent__lte=100),
                                   name="usage_budget_warn_percent_at_most_100"),
        ]

    def __str__(self):
        return f"{self.subject_label} {self.period} budget"

    @property
    def is_default(self) -> bool:
        return self.scope == self.Scope.DEFAULT

    def clean(self):
        """The scope names exactly its subject (the admin's form; the API and set_budget say the same)."""
        super().clean()
        subject_field = self.SUBJECT_FIELDS.get(self.scope)
        errors = {}
        if subject_field and getattr(self, f"{subject_field}_id") is None:
            errors[subject_field] = f"A {self.get_scope_display()} budget names its {subject_field}."
        for field in self.SUBJECT_FIELDS.values():
            if field != subject_field and getattr(self, f"{field}_id") is not None:
                errors[field] = f"Leave this empty for a {self.get_scope_display()} budget."
        if errors:
            raise ValidationError(errors)

    @property
    def subject_label(self) -> str:
        """How the budget's subject is named: a username, a key prefix, a project's public id, "default"."""
        if self.scope == self.Scope.USER:
            return self.user.get_username()
        if self.scope == self.Scope.KEY:
            return self.key.prefix
        if self.scope == self.Scope.PROJECT:
            return self.project.public_id
        return "default"

    @property
    def limit_usd(self):
        return nanos_to_usd(self.limit_nanos)


class RollupState(models.Model):
    """The rollups' watermark (one row): every local hour that ends at or before it is rolled into
    the hour table, every day and month that ends at or before it into theirs. Writers read it under
    a shared lock, rollups change it under an exclusive one (usage.sql.WATERMARK_LOCK_KEY), so a
    late delta and a rollup are ordered one after the other."""

    watermark = models.DateTimeField(null=True, blank=True)
    time_zone = models.CharField(max_length=64, blank=True, help_text="TIME_ZONE the rolled levels follow.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "usage_rollup_state"


def new_alert_id() -> str:
    import uuid

    return f"alrt_{uuid.uuid4().hex}"


class BudgetAlert(models.Model):
    """A budget's alert threshold crossed by one subject in one period: decided once (usage.budgets.alerts),
    with its deliveries (AlertDelivery, the outbox) written in the same transaction.

    Once per (budget, subject, period, threshold) is the unique constraint below, so two deciders
    racing cannot both decide it. Every column in it is NOT NULL (a NULL would make each row
    distinct): `subject_pk` is an id even for a default budget, and `period_key` is a string even
    for a `total` budget, which has no start."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    # What was crossed, as it stood at the decision (the budget may be edited afterwards).
    scope = models.CharField(max_length=10, choices=Budget.Scope.choices)
    # The id of the budget's user, key or project; for a default budget, of the user it alerts
    # (a default budget applies to each user alone, so it alerts per user).
    subject_pk = models.BigIntegerField("subject's id")
    subject = models.CharField(max_length=150, help_text="Username, key prefix or project id, as alerts name it.")
    period = models.CharField(max_length=10, choices=Budget.Period.choices)
    period_start = models.DateTimeField(null=True, blank=True, help_text="Empty for a total budget.")
    period_key = models.CharField(max_length=40, help_text="The period's start in UTC, or \"total\".")
    threshold_percent = models.PositiveSmallIntegerField()
    spend_nanos = models.BigIntegerField(help_text="The period's spend when the alert was decided.")
    limit_nanos = models.BigIntegerField(help_text="The cap when the alert was decided.")
    decided_at = models.DateTimeField()
    # Sent with every delivery: receivers drop repeats by it.
    event_id = models.CharField("idempotency id", max_length=40, unique=True, default=new_alert_id, editable=False)

    class Meta:
        db_table = "usage_budget_alert"
        ordering = ["-decided_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["budget", "subject_pk", "period_key", "threshold_percent"],
                                               name="usage_budget_alert_once_per_period")]

    def __str__(self):
        return f"{self.subject} {self.period} budget at {self.threshold_percent}%"

    @property
    def spend_usd(self):
        return nanos_to_usd(self.spend_nanos)

    @property
    def limit_usd(self):
        return nanos_to_usd(self.limit_nanos)


class AlertDelivery(models.Model):
    """One way an alert goes out (an email address, a webhook URL): the outbox, swept by
    usage.budgets.alerts.sweep. A sweeper claims a row by moving `next_attempt_at` one lease ahead under
    its `claim_token`; a sweeper that dies mid-send leaves the row due again once the lease ends."""

    class Channel(models.TextChoices):
        EMAIL = "email", "email"
        WEBHOOK = "webhook", "webhook"

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        SENT = "sent", "sent"
        FAILING = "failing", "failing (retried)"

    alert = models.ForeignKey(BudgetAlert, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    target = models.CharField(max_length=500, help_text="The email address or the webhook URL.")
    # The project whose webhook this is (its secret signs the body); empty: an email or the global webhook.
    project = models.ForeignKey("gateway.Project", on_delete=models.CASCADE, null=True, blank=True,
                                related_name="+")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    claim_token = models.CharField(max_length=32, blank=True, default="", editable=False)
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "usage_alert_delivery"
        ordering = ["-created_at", "-id"]
        verbose_name = "alert delivery"
        verbose_name_plural = "alert deliveries"
        constraints = [models.UniqueConstraint(fields=["alert", "channel", "target"],
                                               name="usage_alert_delivery_once_per_target")]
        # The sweep's question: which rows not yet sent are due (sent rows stay out of the index).
        indexes = [models.Index(fields=["next_attempt_at"], condition=models.Q(status__in=["pending", "failing"]),
                                name="usage_alert_delivery_due")]

    def __str__(self):
        return f"{self.channel} to {self.target} ({self.status})"
