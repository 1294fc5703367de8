"""API keys: a caller's credential, stored as its SHA-256 digest, in one project for good."""

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from gateway.models.projects import DEFAULT_PROJECT_ID, Project

KEY_PREFIX = "cvk_"
# The part of a key kept in clear, so an admin can tell keys apart: "cvk_" + 8 characters.
VISIBLE_PREFIX_LENGTH = len(KEY_PREFIX) + 8
ACTIVE = "active"  # the status of a key that works


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def usable(self, now=None):
        """The keys whose status() is active, in SQL (the gateway's cache and the API's look-up)."""
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True, user__is_active=True, project__is_active=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )

    def find_usable(self, digest: str) -> "ApiKey | None":
        """The usable key with this digest, its user loaded (the gateway's and the API's one look-up)."""
        return self.usable().select_related("user").filter(digest=digest).first()


class ApiKeyManager(models.Manager.from_queryset(ApiKeyQuerySet)):
    def create_key(self, user, name: str = "", expires_in_days: int | None = None, project: "Project | None" = None):
        """Create a key and return (ApiKey, raw key). The raw key exists only in this return value.
        Without a project the key goes to the Default project; in any, its user must be a member
        (ValidationError otherwise)."""
        project = project or Project.objects.default()
        refusal = project.key_refusal(user)
        if refusal:
            raise ValidationError({"project": refusal})
        raw = KEY_PREFIX + secrets.token_urlsafe(32)  # 256 bits of randomness
        while self.filter(prefix=raw[:VISIBLE_PREFIX_LENGTH]).exists():  # 48 bits shown: a clash is rare
            raw = KEY_PREFIX + secrets.token_urlsafe(32)
        expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
        api_key = self.create(user=user, name=name, project=project, prefix=raw[:VISIBLE_PREFIX_LENGTH],
                              digest=hash_key(raw), expires_at=expires_at)
        return api_key, raw


class ApiKey(models.Model):
    """A caller's credential. Only the SHA-256 digest is stored; the key is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    # Fixed at creation (save() refuses a change): a project's usage is its keys' usage, so a key
    # moving would move its history. The database default serves keys inserted by raw SQL.
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="api_keys",
                                default=DEFAULT_PROJECT_ID, db_default=DEFAULT_PROJECT_ID)
    name = models.CharField(max_length=100, blank=True)
    # Unique: it is how a key is named wherever keys are listed, and OpenAI-shaped usage's `api_key_id`.
    prefix = models.CharField(max_length=VISIBLE_PREFIX_LENGTH, unique=True, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyManager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self):
        return f"{self.prefix}… ({self.name or 'unnamed'})"

    @classmethod
    def from_db(cls, db, field_names, values):
        key = super().from_db(db, field_names, values)
        key._project_id_loaded = key.__dict__.get("project_id")  # what save() compares against
        return key

    def project_change_error(self) -> str | None:
        loaded = getattr(self, "_project_id_loaded", None)
        if self._state.adding or loaded is None or self.project_id == loaded:
            return None
        return "A key's project is fixed when the key is created: create a new key in the other project instead."

    def clean(self):
        super().clean()
        if error := self.project_change_error():
            raise ValidationError({"project": error})

    def save(self, *args, **kwargs):
        if error := self.project_change_error():
            raise ValidationError({"project": error})
        super().save(*args, **kwargs)
        self._project_id_loaded = self.project_id  # a key just created is held to its project too

    def status(self, now=None) -> str:
        """Why the key works or not, as the admin and the usage pages name it: the one rule for a key's
        status (ApiKeyQuerySet.usable is its SQL form, for the keys whose status is active)."""
        now = now or timezone.now()
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        if not self.user.is_active:
            return "user inactive"
        if not self.project.is_active:
            return "project inactive"
        return ACTIVE

    def is_usable(self, now=None) -> bool:
        return self.status(now) == ACTIVE
