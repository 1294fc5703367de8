import hashlib
import os
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.core.management.color import no_style
from django.db import connections, models, transaction
from django.utils import timezone

from gateway.http_client import DIRECT, check_proxy_url
from usage.pricing import PriceError, Prices

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

# A facade's credential variable must be one of these: otherwise whoever may edit a facade could
# point it at SECRET_KEY or DATABASE_URL and have the gateway send that value to a server of theirs.
UPSTREAM_KEY_VARIABLE_PREFIX = "CODEVECTOR_UPSTREAM_"
ROUTING_PERMISSION = "gateway.change_facade_routing"


def credential_variable_allowed(name: str) -> bool:
    """The one rule for which environment variables a facade may name as its credential
    (ModelFacade.clean, the gateway's facade snapshot and the system check all ask here)."""
    return not name or name.startswith(UPSTREAM_KEY_VARIABLE_PREFIX) or name in settings.GATEWAY_UPSTREAM_KEY_VARIABLES


def shown_routing_value(field: str, value: str) -> str:
    """A routing field's value as the admin and its history may show it: a proxy URL without its
    credentials, everything else as it is (variable names and URLs, never a secret)."""
    if field == "upstream_proxy" and value:
        from gateway.http_client import redact_proxy_url  # the client owns the proxy URL's form

        return redact_proxy_url(value)
    return value


def may_route(user) -> bool:
    """Who may set where a facade's traffic goes and which credential and organisation pay for it."""
    return bool(user and user.is_active and (user.is_superuser or user.has_perm(ROUTING_PERMISSION)))


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
    # Sent upstream with the credential: they decide which organisation and project of the
    # provider account pays, so callers' own openai-organization/openai-project headers are dropped.
    openai_organization = models.CharField(
        "OpenAI organization", max_length=100, blank=True,
        help_text="Optional: sent upstream as OpenAI-Organization (which organization of the account pays).")
    openai_project = models.CharField(
        "OpenAI project", max_length=100, blank=True,
        help_text="Optional: sent upstream as OpenAI-Project (which project of the account pays).")
    # How this facade's traffic leaves the gateway, when not as all the others' does (each blank: the
    # gateway's setting). Paths of files on the gateway's hosts, never the certificates or keys themselves.
    upstream_proxy = models.CharField(
        "upstream proxy", max_length=500, blank=True,
        help_text=f"Optional: http://[user:password@]host:port, this facade's egress proxy for both http and https "
                  f"(NO_PROXY does not apply to it), or {DIRECT} to reach the upstream directly. Blank: the "
                  f"gateway's (GATEWAY_UPSTREAM_PROXY, HTTPS_PROXY, HTTP_PROXY, NO_PROXY).")
    upstream_ca_bundle = models.CharField(
        "upstream CA bundle", max_length=500, blank=True,
        help_text="Optional: absolute path, on the gateway's hosts, of a PEM file of CA certificates trusted for "
                  "this facade's upstream, beside the system's. Blank: GATEWAY_UPSTREAM_CA_BUNDLE.")
    upstream_client_cert = models.CharField(
        "upstream client certificate", max_length=500, blank=True,
        help_text="Optional: absolute path, on the gateway's hosts, of the PEM client certificate (mTLS) presented "
                  "to this facade's upstream; it may hold the key too. Blank: GATEWAY_UPSTREAM_CLIENT_CERT and "
                  "GATEWAY_UPSTREAM_CLIENT_KEY.")
    upstream_client_key = models.CharField(
        "upstream client key", max_length=500, blank=True,
        help_text="Optional: absolute path of the client certificate's PEM key, when not in the certificate's "
                  "file. Only the path is stored, never the key.")
    # Prices are integer micro-USD per million tokens, per-call prices integer micro-USD per 1,000
    # calls: exact for every published price (usage.pricing). Long-context tiers and service-tier
    # or speed variants are `price_rules` (usage.pricing's JSON form), validated by clean().
    input_price_micros = models.PositiveBigIntegerField(default=0)
    cached_input_price_micros = models.PositiveBigIntegerField(default=0)
    cache_write_price_micros = models.PositiveBigIntegerField(
        default=0, help_text="Cache writes with the default retention (Anthropic's 5 minutes).")
    cache_write_extended_price_micros = models.PositiveBigIntegerField(
        default=0, help_text="Cache writes with the extended retention (Anthropic's 1 hour, OpenAI's 12 hours).")
    output_price_micros = models.PositiveBigIntegerField(default=0)
    web_search_price_micros = models.PositiveBigIntegerField(default=0, help_text="Micro-USD per 1,000 web searches.")
    file_search_price_micros = models.PositiveBigIntegerField(default=0, help_text="Micro-USD per 1,000 file searches.")
    price_rules = models.JSONField(default=dict, blank=True,
                                   help_text="Long-context tiers and service-tier or speed variants (usage.pricing).")
    # Where the prices came from (`create_facade --catalog`, the admin's catalog picker): checked
    # against the catalog's current prices by `manage.py prices`.
    catalog_ref = models.CharField("catalog model", max_length=200, blank=True,
                                   help_text="The price catalog's model (provider:model) the prices came from.")
    catalog_version = models.CharField(max_length=100, blank=True, editable=False)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Where traffic goes and who pays: only superusers and holders of change_facade_routing set these.
    ROUTING_FIELDS = ("provider", "base_url", "api_key_env", "openai_organization", "openai_project",
                      "upstream_proxy", "upstream_ca_bundle", "upstream_client_cert", "upstream_client_key")

    class Meta:
        ordering = ["name"]
        verbose_name = "model facade"
        permissions = [("change_facade_routing",
                        "Can change a facade's routing (provider, base URL, credential variable, organization)")]

    def __str__(self):
        return self.name

    def clean(self):
        """The facade's own rules, for the admin's form and `create_facade` alike."""
        super().clean()
        errors = {}
        if self.api_key_env and not credential_variable_allowed(self.api_key_env):
            errors["api_key_env"] = credential_variable_error(self.api_key_env)
        if self.provider == self.Provider.ANTHROPIC and self.kind == self.Kind.EMBEDDINGS:
            errors["kind"] = "Anthropic facades are chat models: Anthropic has no embeddings endpoint."
        if (self.openai_organization or self.openai_project) and self.provider != self.Provider.OPENAI:
            errors["openai_organization"] = "An OpenAI organization or project applies to OpenAI-compatible facades only."
        errors.update(self.transport_errors())
        try:
            self.prices  # noqa: B018 (validates price_rules)
        except PriceError as exc:
            errors["price_rules"] = str(exc)
        if errors:
            raise ValidationError(errors)

    def transport_errors(self) -> dict[str, str]:
        """The upstream proxy and TLS files' rules. No message repeats the proxy URL (it may carry
        credentials); a file's existence is not checked here (the admin may run on another host):
        one the gateway cannot load answers the facade's requests with a 502 naming the setting."""
        errors = {}
        if self.upstream_proxy and self.upstream_proxy != DIRECT:
            try:
                check_proxy_url(self.upstream_proxy)
            except ValueError as exc:
                errors["upstream_proxy"] = f"{exc} Or {DIRECT} for no proxy, or blank for the gateway's."
        for field in ("upstream_ca_bundle", "upstream_client_cert", "upstream_client_key"):
            path = getattr(self, field)
            if path and (not os.path.isabs(path) or any(c in path for c in "\0\r\n")):
                errors[field] = "An absolute path of a PEM file on the gateway's hosts, such as /etc/codevector/ca.pem."
        if self.upstream_client_key and not self.upstream_client_cert and "upstream_client_key" not in errors:
            errors["upstream_client_key"] = "A client key goes with the facade's own client certificate: set that too."
        return errors

    def save(self, *args, **kwargs):
        if not self.upstream_model:
            self.upstream_model = self.name
        super().save(*args, **kwargs)

    @property
    def prices(self) -> Prices:
        """The price table the gateway bills with (PriceError if `price_rules` is malformed)."""
        return Prices.from_columns(
            input_micros=self.input_price_micros, cached_input_micros=self.cached_input_price_micros,
            cache_write_micros=self.cache_write_price_micros,
            cache_write_extended_micros=self.cache_write_extended_price_micros,
            output_micros=self.output_price_micros, web_search_micros=self.web_search_price_micros,
            file_search_micros=self.file_search_price_micros, rules=self.price_rules or None)


def credential_variable_error(name: str) -> str:
    allowed = ", ".join(settings.GATEWAY_UPSTREAM_KEY_VARIABLES) or "none"
    return (f"{name} is not an upstream credential variable: use a name starting with "
            f"{UPSTREAM_KEY_VARIABLE_PREFIX}, or one of GATEWAY_UPSTREAM_KEY_VARIABLES ({allowed}).")


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def usable(self, now=None):
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True, user__is_active=True, project__is_active=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )

    def find_usable(self, digest: str) -> "ApiKey | None":
        """The usable key with this digest, its user loaded (the gateway's and the API's one look-up)."""
        return self.usable().select_related("user").filter(digest=digest).first()


# The project every key belongs to unless created in another: a fixed primary key, because the
# column's database default names it, so a key inserted by raw SQL (the ledger's reserved keys,
# usage.sql.ensure_reserved_keys) or by a process still on code from before projects lands there.
DEFAULT_PROJECT_ID = 1
DEFAULT_PROJECT_PUBLIC_ID = "proj_default"
DEFAULT_PROJECT_NAME = "Default project"
DEFAULT_PROJECT_DESCRIPTION = "Every user's project: keys created without a project, and keys from before projects."
PROJECT_ID_PREFIX = "proj_"


def new_project_public_id() -> str:
    return PROJECT_ID_PREFIX + secrets.token_urlsafe(12)  # 96 bits: not guessable, short enough to type


class ProjectQuerySet(models.QuerySet):
    def for_user(self, user):
        """The projects `user` belongs to: the one rule for membership. Every user is a member of
        the Default project without a row saying so; of any other, by a ProjectMember row."""
        user_id = getattr(user, "pk", None)  # None, an anonymous user: the Default project only
        mine = ProjectMember.objects.filter(user_id=user_id).values("project")
        return self.filter(models.Q(pk=DEFAULT_PROJECT_ID) | models.Q(pk__in=mine))


class ProjectManager(models.Manager.from_queryset(ProjectQuerySet)):
    def default(self) -> "Project":
        return self.get(pk=DEFAULT_PROJECT_ID)

    def ensure_default(self, using: str = "default") -> None:
        """Create the Default project unless it exists (after a test's flush: see GatewayConfig)."""
        _, created = self.db_manager(using).get_or_create(
            pk=DEFAULT_PROJECT_ID, defaults={"public_id": DEFAULT_PROJECT_PUBLIC_ID, "name": DEFAULT_PROJECT_NAME,
                                             "description": DEFAULT_PROJECT_DESCRIPTION})
        if created:  # an explicit primary key leaves PostgreSQL's sequence behind: the next project would clash
            with connections[using].cursor() as cursor:
                for statement in connections[using].ops.sequence_reset_sql(no_style(), [self.model]):
                    cursor.execute(statement)

    def create_project(self, name: str, description: str = "", owners=(), members=()) -> "Project":
        """A project with its owners and members, all or nothing."""
        owners, members = list(owners), list(members)
        both = {u.pk for u in owners} & {u.pk for u in members}
        if both:
            names = sorted(u.get_username() for u in owners if u.pk in both)
            raise ValidationError(f"{', '.join(names)}: an owner or a member, not both.")
        project = self.model(name=name, description=description)
        project.full_clean()
        with transaction.atomic():
            project.save()
            ProjectMember.objects.bulk_create(
                [ProjectMember(project=project, user=u, role=ProjectMember.Role.OWNER) for u in owners]
                + [ProjectMember(project=project, user=u, role=ProjectMember.Role.MEMBER) for u in members])
        return project


class Project(models.Model):
    """A team, an application or a customer: every API key belongs to one, fixed when it is created,
    so a project's usage is its keys' usage."""

    name = models.CharField(max_length=100, unique=True, error_messages={
        "unique": "A project with this name already exists: choose another name."})
    # How commands, the API and people name a project: never reused, never edited.
    public_id = models.CharField("public id", max_length=40, unique=True, editable=False,
                                 default=new_project_public_id)
    description = models.TextField(blank=True)
    is_active = models.BooleanField("active", default=True,
                                    help_text="An inactive project gets no new keys and its keys are refused, as revoked ones "
                                              "are, until it is active again; its usage stays.")
    created_at = models.DateTimeField(auto_now_add=True)
    # Budget alerts of this project and of its keys are also posted here (usage.budgets.alerts), signed with
    # the secret (HMAC-SHA256 of the body). The secret is write-only: never shown once saved, never logged.
    alert_webhook_url = models.URLField(
        "alert webhook URL", max_length=500, blank=True,
        help_text="Budget alerts of this project and its keys are POSTed here as signed JSON. Empty: none.")
    alert_webhook_secret = models.CharField(
        "alert webhook secret", max_length=200, blank=True,
        help_text="Signs each alert (X-CodeVector-Signature: sha256=HMAC-SHA256 of the body). Needed with a URL.")

    objects = ProjectManager()

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def is_default(self) -> bool:
        return self.pk == DEFAULT_PROJECT_ID

    def clean(self):
        super().clean()
        if self.is_default and not self.is_active:
            raise ValidationError({"is_active": "The Default project stays active: keys without a project go there."})
        if self.alert_webhook_url and not self.alert_webhook_secret:
            raise ValidationError({"alert_webhook_secret": "A webhook URL needs a secret: alerts are never sent unsigned."})

    def has_member(self, user) -> bool:
        return Project.objects.for_user(user).filter(pk=self.pk).exists()

    def key_refusal(self, user) -> str | None:
        """Why a key for `user` cannot be created in this project, or None: the one rule that
        create_key, the admin's key form and `create_api_key --project` share."""
        if not self.is_active:
            return f"Project {self.name} ({self.public_id}) is inactive: it gets no new keys."
        if not self.has_member(user):
            return (f"{user.get_username()} is not a member of project {self.name} ({self.public_id}): "
                    "add them to the project first, or create the key in another project.")
        return None


class ProjectMember(models.Model):
    """A user's membership of a project other than the Default one (everyone is a member of that)."""

    class Role(models.TextChoices):
        MEMBER = "member", "Member"
        OWNER = "owner", "Owner"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="project_memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="gateway_project_member_once")]
        verbose_name = "project member"

    def __str__(self):
        return f"{self.user} ({self.role}) in {self.project}"


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
        """Why the key works or not, as the admin and the usage pages name it."""
        now = now or timezone.now()
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        if not self.user.is_active:
            return "user inactive"
        if not self.project.is_active:
            return "project inactive"
        return "active"

    def is_usable(self, now=None) -> bool:
        now = now or timezone.now()
        return (
            self.revoked_at is None
            and self.user.is_active
            and self.project.is_active
            and (self.expires_at is None or self.expires_at > now)
        )
