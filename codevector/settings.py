"""CodeVector settings: every tunable is read from the environment here, typed.

Defaults let a newcomer run everything locally on SQLite; a bad value stops the
process with ImproperlyConfigured naming the variable and what it expected.
"""

import os
import re
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    """For durations in seconds only; money never goes through here."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number of seconds, not {raw!r}") from None
    if not value >= minimum or value == float("inf"):
        raise ImproperlyConfigured(f"{name} must be a finite number >= {minimum}, not {raw!r}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_database(name: str, default: str) -> dict:
    raw = os.environ.get(name) or default
    try:
        config = dj_database_url.parse(raw, conn_max_age=60, conn_health_checks=True)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not a database URL we understand: {exc}") from None
    engine = config["ENGINE"]
    if engine == "django.db.backends.sqlite3":
        config["CONN_MAX_AGE"] = 0
        config["OPTIONS"] = {
            # WAL lets readers (the admin) run beside the ledger's writer; the busy
            # timeout makes concurrent writers wait instead of failing at once.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
        }
        test_name = os.environ.get("SQLITE_TEST_NAME") or str(VAR_DIR / "test" / "codevector-test.sqlite3")
        # A file, never :memory:, so the gateway server started by tests sees the same data.
        config["TEST"] = {"NAME": test_name}
    elif engine == "django.db.backends.postgresql":
        config.setdefault("OPTIONS", {})
    else:
        raise ImproperlyConfigured(f"{name} must point at PostgreSQL or SQLite, not {engine}")
    return config


def env_timezone(name: str, default: str) -> str:
    value = os.environ.get(name) or default
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ImproperlyConfigured(f"{name} must be an IANA time zone such as Europe/Paris, not {value!r}") from None
    return value


DEBUG = env_bool("DEBUG", False)
# Only DEBUG runs fall back to a development key (it is published in the repository, so sessions
# signed with it could be forged). Otherwise SECRET_KEY stays empty and every way of serving
# refuses to start (gunicorn.conf.py, codevector.asgi); `make run` and tests/run.sh set one.
DEV_SECRET_KEY = "codevector-development-key-not-for-production"
SECRET_KEY = os.environ.get("SECRET_KEY", "") or (DEV_SECRET_KEY if DEBUG else "")
SECRET_KEY_MISSING = ("SECRET_KEY is not set: set it to a long random value, e.g. "
                      "SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(50))')")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "codevector.apps.CodeVectorAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "codevector",
    "gateway",
    "usage",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "codevector.urls"
WSGI_APPLICATION = "codevector.wsgi.application"
ASGI_APPLICATION = "codevector.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env_database("DATABASE_URL", f"sqlite:///{VAR_DIR / 'codevector.sqlite3'}")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_timezone("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Chart.js comes from npm (package.json); only its dist folder is exposed.
STATICFILES_DIRS = [("vendor/chart.js", BASE_DIR / "node_modules" / "chart.js" / "dist")]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Plain names (no manifest) so tests and a fresh checkout need no collectstatic step.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = env_bool("WHITENOISE_USE_FINDERS", True)

LOGIN_URL = "admin:login"

# Behind a TLS-terminating proxy (the recommended deployment) set SECURE_PROXY_SSL_HEADER via
# TRUST_X_FORWARDED_PROTO=true so Django knows the original request was HTTPS.
if env_bool("TRUST_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG and env_bool("HTTPS", False))
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", env_bool("HTTPS", False))
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", env_bool("HTTPS", False))
# Served over HTTPS, browsers are told to keep to it for a year; whether every sub-domain is
# HTTPS-only (and preloading) is the operator's to decide, so those two warnings are not raised
# until one of the settings is given.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if env_bool("HTTPS", False) else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SILENCED_SYSTEM_CHECKS = [
    *([] if "SECURE_HSTS_INCLUDE_SUBDOMAINS" in os.environ else ["security.W005"]),
    *([] if "SECURE_HSTS_PRELOAD" in os.environ else ["security.W021"]),
]
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- Usage ledger and degraded mode -------------------------------------------------------
USAGE_BUFFER_DIR = Path(env_str("USAGE_BUFFER_DIR", "/var/lib/codevector/usage-buffer/"))
USAGE_BUFFER_MAX_FILE_BYTES = env_int("USAGE_BUFFER_MAX_FILE_BYTES", 8 * 1024 * 1024, minimum=4096)
# While the database is down, writes go straight to the buffer; it is probed this often.
USAGE_DB_RETRY_SECONDS = env_float("USAGE_DB_RETRY_SECONDS", 1.0, minimum=0.05)
USAGE_DB_TIMEOUT_SECONDS = env_float("USAGE_DB_TIMEOUT_SECONDS", 2.0, minimum=0.1)
USAGE_DRAIN_INTERVAL_SECONDS = env_float("USAGE_DRAIN_INTERVAL_SECONDS", 5.0, minimum=0.1)
USAGE_APPLIED_IDS_DAYS = env_int("USAGE_APPLIED_IDS_DAYS", 30, minimum=1)
# When neither the database nor the buffer can take usage: refuse new requests (503, the
# default) or serve them anyway, logging each lost delta so drain_usage_buffer --from-log can replay it.
USAGE_FAIL_OPEN = env_bool("USAGE_FAIL_OPEN", False)
# PostgreSQL's synchronous_commit for the gateway's ledger writes. On (the default), a request's
# delta is on disk (fsync) before its last byte goes out. Off, the commit returns before the WAL
# flush: a request costs about one round trip instead of a disk flush, and a PostgreSQL or OS
# crash (not an outage: those are buffered) can lose the last few hundred milliseconds of deltas.
USAGE_SYNCHRONOUS_COMMIT = env_bool("USAGE_SYNCHRONOUS_COMMIT", True)
# While a ledger batch is in flight and every request the worker serves waits for a commit, the
# gateway's event loop polls for at most this long instead of sleeping until the commit answers
# (0: it sleeps). On virtual machines whose idle CPUs halt, the wake-up costs more than the wait.
# With other requests in progress their I/O wakes the loop anyway, and it does not poll: polling
# there took the CPU the database and the upstream needed (README, Performance).
USAGE_COMMIT_SPIN_SECONDS = env_float("USAGE_COMMIT_SPIN_SECONDS", 0.002, minimum=0)

# --- Rollups ------------------------------------------------------------------------------
# A local hour is rolled this long after it ends (longer than any write in flight).
USAGE_ROLLUP_GRACE_SECONDS = env_int("USAGE_ROLLUP_GRACE_SECONDS", 120)
USAGE_5MIN_RETENTION_DAYS = env_int("USAGE_5MIN_RETENTION_DAYS", 3, minimum=1)
USAGE_HOUR_RETENTION_DAYS = env_int("USAGE_HOUR_RETENTION_DAYS", 400, minimum=1)

# --- Email (Django's backend: budget alerts) ----------------------------------------------
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)  # STARTTLS, usually port 587
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)  # TLS from the start, usually port 465
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL are exclusive: set one of them (STARTTLS or TLS)")
EMAIL_TIMEOUT = env_float("EMAIL_TIMEOUT", 10.0, minimum=0.1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "codevector@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Budget alerts (usage.budgets.alerts) ---------------------------------------------------------
# Every alert is also emailed to these addresses, beside its user or its project's owners.
USAGE_ALERT_EMAILS = env_list("USAGE_ALERT_EMAILS", [])
# Every alert is also POSTed here, signed with the secret (a project may have a webhook of its own).
USAGE_ALERT_WEBHOOK_URL = env_str("USAGE_ALERT_WEBHOOK_URL", "")
USAGE_ALERT_WEBHOOK_SECRET = env_str("USAGE_ALERT_WEBHOOK_SECRET", "")
if USAGE_ALERT_WEBHOOK_URL and not USAGE_ALERT_WEBHOOK_SECRET:
    raise ImproperlyConfigured("USAGE_ALERT_WEBHOOK_URL is set without USAGE_ALERT_WEBHOOK_SECRET: set a long random "
                               "secret, which signs each alert (receivers check X-CodeVector-Signature with it)")
USAGE_ALERT_WEBHOOK_TIMEOUT_SECONDS = env_float("USAGE_ALERT_WEBHOOK_TIMEOUT_SECONDS", 5.0, minimum=0.1)


def env_seconds_list(name: str, default: list[int]) -> list[int]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    values = [item.strip() for item in raw.split(",")]
    if not all(value.isdigit() and int(value) >= 1 for value in values):
        raise ImproperlyConfigured(f"{name} must be whole seconds of at least 1 separated by commas, such as "
                                   f"60,300,1800, not {raw!r}")
    return [int(value) for value in values]


# Seconds before the next try of a delivery that failed: the n-th failure waits the n-th value, the
# last value repeats (a delivery is retried until it succeeds: none is dropped).
USAGE_ALERT_RETRY_SECONDS = env_seconds_list("USAGE_ALERT_RETRY_SECONDS", [60, 300, 1800, 7200])
# A sweeper that dies while sending leaves its delivery to be retried once this lease ends. It must
# outlast any one send (a connect and a read, each bounded by its timeout), or a slow send could be
# taken over and sent twice.
USAGE_ALERT_LEASE_SECONDS = env_int("USAGE_ALERT_LEASE_SECONDS", 120, minimum=1)
if USAGE_ALERT_LEASE_SECONDS < 2 * max(USAGE_ALERT_WEBHOOK_TIMEOUT_SECONDS, EMAIL_TIMEOUT):
    raise ImproperlyConfigured("USAGE_ALERT_LEASE_SECONDS must be at least twice the longer of "
                               "USAGE_ALERT_WEBHOOK_TIMEOUT_SECONDS and EMAIL_TIMEOUT (a send connects, then reads)")

# --- Gateway --------------------------------------------------------------------------
GATEWAY_CACHE_SECONDS = env_float("GATEWAY_CACHE_SECONDS", 5.0, minimum=0.1)
GATEWAY_NEGATIVE_CACHE_SECONDS = env_float("GATEWAY_NEGATIVE_CACHE_SECONDS", 2.0)
GATEWAY_KEY_LOOKUPS_PER_SECOND = env_int("GATEWAY_KEY_LOOKUPS_PER_SECOND", 20, minimum=1)
GATEWAY_MAX_BODY_BYTES = env_int("GATEWAY_MAX_BODY_BYTES", 10 * 1024 * 1024, minimum=1024)
GATEWAY_CONNECT_TIMEOUT = env_float("GATEWAY_CONNECT_TIMEOUT", 5.0, minimum=0.01)
GATEWAY_READ_TIMEOUT = env_float("GATEWAY_READ_TIMEOUT", 600.0, minimum=0.01)
GATEWAY_UPSTREAM_CONNECTIONS = env_int("GATEWAY_UPSTREAM_CONNECTIONS", 2000, minimum=1)
# The upstream client (gateway.http_client). Per origin beside the total, so that requests piling up
# behind one stuck upstream cannot take every slot; a wait for a slot counts against
# GATEWAY_CONNECT_TIMEOUT (then 502, UpstreamPoolFull). One worker serves 1,000 concurrent streams
# to one provider (agent tools hold streams for minutes), so an origin may take half the total.
GATEWAY_UPSTREAM_CONNECTIONS_PER_ORIGIN = env_int("GATEWAY_UPSTREAM_CONNECTIONS_PER_ORIGIN", 1000, minimum=1)
# Idle connections are closed by the gateway after this: below the 5 s after which uvicorn (and many
# servers like it) close theirs, so the gateway closes first instead of sending a request into a close.
GATEWAY_UPSTREAM_KEEPALIVE_SECONDS = env_float("GATEWAY_UPSTREAM_KEEPALIVE_SECONDS", 4.0)
# How long a resolved upstream name is kept (getaddrinfo has no TTL to tell); 0 resolves every connection.
GATEWAY_UPSTREAM_DNS_TTL_SECONDS = env_float("GATEWAY_UPSTREAM_DNS_TTL_SECONDS", 30.0)
# A whole answer larger than this, or an encoded one that decodes to more, is refused (502) instead
# of held in memory; streams have no total limit.
GATEWAY_MAX_RESPONSE_BYTES = env_int("GATEWAY_MAX_RESPONSE_BYTES", 64 * 1024 * 1024, minimum=1024)
# An egress proxy for upstream traffic (http://[user:password@]host:port): GATEWAY_UPSTREAM_PROXY, when
# set, replaces https_proxy/HTTPS_PROXY and http_proxy/HTTP_PROXY for both schemes; no_proxy/NO_PROXY
# applies either way, as curl reads it (loopback goes through the proxy unless named there).
GATEWAY_UPSTREAM_PROXY = env_str("GATEWAY_UPSTREAM_PROXY", "")
GATEWAY_UPSTREAM_HTTPS_PROXY = GATEWAY_UPSTREAM_PROXY or env_str("https_proxy", "") or env_str("HTTPS_PROXY", "")
GATEWAY_UPSTREAM_HTTP_PROXY = GATEWAY_UPSTREAM_PROXY or env_str("http_proxy", "") or env_str("HTTP_PROXY", "")
GATEWAY_UPSTREAM_NO_PROXY = env_str("no_proxy", "") or env_str("NO_PROXY", "")
# PEM files: a private CA bundle ADDED to the system's trust store (never replacing it), and a client
# certificate and key for upstreams that ask for one (mTLS).
GATEWAY_UPSTREAM_CA_BUNDLE = env_str("GATEWAY_UPSTREAM_CA_BUNDLE", "")
GATEWAY_UPSTREAM_CLIENT_CERT = env_str("GATEWAY_UPSTREAM_CLIENT_CERT", "")
GATEWAY_UPSTREAM_CLIENT_KEY = env_str("GATEWAY_UPSTREAM_CLIENT_KEY", "")
GATEWAY_DB_POOL_SIZE = env_int("GATEWAY_DB_POOL_SIZE", 4, minimum=1)
# The environment variables a facade may name as its upstream credential, beside every name that
# starts with CODEVECTOR_UPSTREAM_ (gateway.models.credential_variable_allowed).
GATEWAY_UPSTREAM_KEY_VARIABLES = env_list("GATEWAY_UPSTREAM_KEY_VARIABLES", ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"])
# The largest token count an upstream may report for one request and be believed: at 2**32 tokens
# even a $600-per-million price stays below 2**53 nanodollars. Above it (or negative, fractional,
# not a number) the request is counted as estimated from its text and flagged.
GATEWAY_MAX_REPORTED_TOKENS = env_int("GATEWAY_MAX_REPORTED_TOKENS", 2**32, minimum=1)
GATEWAY_METRICS_TOKEN = env_str("GATEWAY_METRICS_TOKEN", "")  # set: /metrics needs "Authorization: Bearer <it>"
GATEWAY_METRICS_ENABLED = env_bool("GATEWAY_METRICS_ENABLED", True)  # false: nothing counted, /metrics is a 404

# --- django-q2 --------------------------------------------------------------------------
Q_CLUSTER = {
    "name": "codevector",
    "orm": "default",
    "workers": env_int("Q_WORKERS", 2, minimum=1),
    "timeout": env_int("Q_TIMEOUT", 600, minimum=1),
    "retry": env_int("Q_TIMEOUT", 600, minimum=1) + 60,
    "catch_up": False,
    "label": "Task queue",
}

# --- API ------------------------------------------------------------------------------
API_THROTTLE_RATE = env_str("API_THROTTLE_RATE", "600/min")
if not re.fullmatch(r"\d+/(s|sec|second|m|min|minute|h|hour|d|day)", API_THROTTLE_RATE):
    raise ImproperlyConfigured(f"API_THROTTLE_RATE must look like 600/min, not {API_THROTTLE_RATE!r}")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "gateway.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # A view is throttled by its `throttle_scope`, at that scope's rate; a view without one is not.
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.ScopedRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"usage": API_THROTTLE_RATE},
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "CodeVector API",
    "DESCRIPTION": "Usage and budgets of the CodeVector gateway. Authenticate with a staff session or "
                   "'Authorization: Bearer <API key>'.",
    "VERSION": "1",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    # Swagger UI's assets come from the sidecar package, served as our static files (no CDN).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {"UsagePeriodEnum": "usage.reads.queries.WINDOWS"},
}

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
