import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from usage.pricing import Prices

KEY_PREFIX = "cvk_"
# The part of a key kept in clear, so an admin can tell keys apart: "cvk_" + 8 characters.
VISIBLE_PREFIX_LENGTH = len(KEY_PREFIX) + 8

facade_name_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$",
    "Use letters, digits and . _ : / @ - (no spaces), starting with a letter or digit.",
)
env_var_validator = RegexValidator(
    r"^[A-Za-z_][A-Za-z0-9_]*$", "An environment variable name: letters, digits and underscores."
)


class ModelFacade(models.Model):
    """A public model name mapped to an upstream provider, model, credential and prices."""

    class Provider(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible"
        ANTHROPIC = "anthropic", "Anthropic-compatible"

    class Kind(models.TextChoices):
        CHAT = "chat", "Chat (responses, chat completions, messages)"
        EMBEDDINGS = "embeddings", "Embeddings"

    name = models.CharField(
        max_length=200, unique=True, validators=[facade_name_validator], help_text="The model id clients send."
    )
    provider = models.CharField(max_length=20, choices=Provider.choices)
    # Which endpoints the model answers: the gateway refuses the other kind's (400 wrong_endpoint),
    # and OpenAI-shaped usage counts chat models as completions, embeddings models as embeddings.
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.CHAT,
                            help_text="Chat models answer /v1/responses, /v1/chat/completions and /v1/messages; "
                                      "embeddings models answer /v1/embeddings.")
    base_url = models.URLField(
        max_length=500,
        help_text="As the provider's SDK takes it: https://api.openai.com/v1 or https://api.anthropic.com",
    )
    upstream_model = models.CharField(max_length=200, blank=True, help_text="Defaults to the public name.")
    api_key_env = models.CharField(
        "credential environment variable",
        max_length=100,
        blank=True,
        validators=[env_var_validator],
        help_text="Name of the environment variable holding the upstream key. The key itself is never stored.",
    )
    # Prices are integer micro-USD per million tokens: exact for every published price.
    input_price_micros = models.PositiveBigIntegerField(default=0)
    cached_input_price_micros = models.PositiveBigIntegerField(default=0)
    cache_write_price_micros = models.PositiveBigIntegerField(default=0)
    output_price_micros = models.PositiveBigIntegerField(default=0)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "model facade"

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        if not self.upstream_model:
            self.upstream_model = self.name
        super().save(*args, **kwargs)

    @property
    def prices(self) -> Prices:
        return Prices(
            input_micros=self.input_price_micros,
            cached_input_micros=self.cached_input_price_micros,
            cache_write_micros=self.cache_write_price_micros,
            output_micros=self.output_price_micros,
        )


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def usable(self, now=None):
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True, user__is_active=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )

    def find_usable(self, digest: str) -> "ApiKey | None":
        """The usable key with this digest, its user loaded (the gateway's and the API's one look-up)."""
        return self.usable().select_related("user").filter(digest=digest).first()


class ApiKeyManager(models.Manager.from_queryset(ApiKeyQuerySet)):
    def create_key(self, user, name: str = "", expires_in_days: int | None = None):
        """Create a key and return (ApiKey, raw key). The raw key exists only in this return value."""
        raw = KEY_PREFIX + secrets.token_urlsafe(32)  # 256 bits of randomness
        while self.filter(prefix=raw[:VISIBLE_PREFIX_LENGTH]).exists():  # 48 bits shown: a clash is rare
            raw = KEY_PREFIX + secrets.token_urlsafe(32)
        expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
        api_key = self.create(
            user=user, name=name, prefix=raw[:VISIBLE_PREFIX_LENGTH], digest=hash_key(raw), expires_at=expires_at
        )
        return api_key, raw


class ApiKey(models.Model):
    """A caller's credential. Only the SHA-256 digest is stored; the key is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
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

    def is_usable(self, now=None) -> bool:
        now = now or timezone.now()
        return (
            self.revoked_at is None
            and self.user.is_active
            and (self.expires_at is None or self.expires_at > now)
        )
