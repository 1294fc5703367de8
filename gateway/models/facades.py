"""Model facades: a public model name mapped to an upstream provider, model, credential and prices,
and the rules for who may set where a facade's traffic goes."""

import os
from typing import NamedTuple

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models

from gateway.http_client import DIRECT, check_proxy_url
from usage.pricing import PriceError, Prices

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


class UsdPrice(NamedTuple):
    column: str  # the integer micro-USD column that stores it (usage.money.usd_to_micros converts)
    label: str
    per: str  # what one amount of USD buys


PER_MILLION_TOKENS, PER_THOUSAND_CALLS = "1M tokens", "1,000 calls"
# The seven base prices as people give them, in USD: the admin's form fields and `create_facade`'s
# options, by the same names.
USD_PRICES = {
    "input_price": UsdPrice("input_price_micros", "Input price", PER_MILLION_TOKENS),
    "cached_input_price": UsdPrice("cached_input_price_micros", "Cached input price", PER_MILLION_TOKENS),
    "cache_write_price": UsdPrice("cache_write_price_micros", "Cache write price", PER_MILLION_TOKENS),
    "cache_write_extended_price": UsdPrice("cache_write_extended_price_micros", "Extended cache write price",
                                           PER_MILLION_TOKENS),
    "output_price": UsdPrice("output_price_micros", "Output price", PER_MILLION_TOKENS),
    "web_search_price": UsdPrice("web_search_price_micros", "Web search price", PER_THOUSAND_CALLS),
    "file_search_price": UsdPrice("file_search_price_micros", "File search price", PER_THOUSAND_CALLS),
}


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

