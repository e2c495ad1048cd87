"""pscsync settings: one file, read top to bottom, every deploy-time value from the environment.

The defaults give the embedded set-up (SQLite in WAL mode under var/, a broker kept in files
under var/) so `make demo` runs on a bare machine with the same web, worker and beat processes
as production. DATABASE_URL and CELERY_BROKER_URL switch to PostgreSQL and Redis.
Every variable is listed in .env.example.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    raw = os.getenv(name)
    if raw is None or raw == "":
        return default
    if raw.lower() not in {"true", "false", "1", "0"}:
        raise ImproperlyConfigured(f"{name} must be 'true' or 'false', got {raw!r}")
    return raw.lower() in {"true", "1"}


def env_int(name: str, default: int) -> int:
    raw = os.getenv(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, got {raw!r}") from None


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.getenv(name)
    if raw is None or raw == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


VAR_DIR = Path(os.getenv("PSCSYNC_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("PSCSYNC_DEBUG", False)

SECRET_KEY = os.getenv("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is required when PSCSYNC_DEBUG is off. `make demo` writes one to var/demo.env."
        )
    SECRET_KEY = "insecure-development-key-only-for-debug-runs-0123456789abcdef"  # noqa: S105 (DEBUG only)

# Key for the authenticated encryption of connector credentials: 32 bytes, urlsafe base64.
# Several keys may be listed as "id:key,id:key"; the first encrypts, all decrypt (rotation).
CREDENTIALS_KEYS = os.getenv("PSCSYNC_CREDENTIALS_KEYS", "")
if not CREDENTIALS_KEYS:
    if not DEBUG:
        raise ImproperlyConfigured(
            "PSCSYNC_CREDENTIALS_KEYS is required when PSCSYNC_DEBUG is off "
            "(python -m pscsync.crypto prints a new one)."
        )
    CREDENTIALS_KEYS = "dev:ZGV2ZWxvcG1lbnQta2V5LW5vdC1mb3ItcHJvZC11c2U="

ALLOWED_HOSTS = env_list("PSCSYNC_ALLOWED_HOSTS", ["127.0.0.1", "localhost"])

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "mozilla_django_oidc",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "pscsync.apps.PscsyncConfig",
    "connectors.apps.ConnectorsConfig",
    "remediation.apps.RemediationConfig",
    "dashboards.apps.DashboardsConfig",
    "studio.apps.StudioConfig",
    "api.apps.ApiConfig",
    "alerts.apps.AlertsConfig",
    # The demo firm: management commands only, no models; the engine never imports it.
    "demo.apps.DemoConfig",
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
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "pscsync.urls"
WSGI_APPLICATION = "pscsync.wsgi.application"

TEMPLATES: list[dict[str, Any]] = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "pscsync.access.navigation",
            ],
            # The presentation filters (money, duration, when, counted, flow_name, ...) in every
            # template without a {% load %}: no page has an excuse to print a raw value.
            "builtins": ["pscsync.templatetags.present"],
        },
    },
]

# --- Database -----------------------------------------------------------------------------
DATABASE_URL = os.getenv("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL, conn_max_age=env_int("PSCSYNC_CONN_MAX_AGE", 60), conn_health_checks=True
        )
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR_DIR / "pscsync.sqlite3"),
            "OPTIONS": {
                # IMMEDIATE takes the write lock at BEGIN, so two writers queue instead of one
                # failing with "database is locked" half-way through a transaction.
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth and sessions --------------------------------------------------------------------
# Every place a password is set runs these (sign-up by an admin, user_provision, the change page).
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
    {"NAME": "accounts.passwords.VarietyValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
SESSION_COOKIE_AGE = env_int("PSCSYNC_SESSION_SECONDS", 12 * 3600)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
# Secure cookies need HTTPS; the demo on http://127.0.0.1 turns this off explicitly.
SECURE_COOKIES = env_bool("PSCSYNC_SECURE_COOKIES", not DEBUG)
SESSION_COOKIE_SECURE = SECURE_COOKIES
CSRF_COOKIE_SECURE = SECURE_COOKIES
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# --- Security hardening (docs/security.md) ------------------------------------------------
# Kept as one block added to the lists above, so it reads in one place.
INSTALLED_APPS += [
    "csp",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "accounts.apps.AccountsConfig",
]
# After authentication django-otp marks the session's second factor; after messages our session
# policy (idle timeout, absolute lifetime, second factor required) runs before any view.
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1,
    "django_otp.middleware.OTPMiddleware",
)
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.contrib.messages.middleware.MessageMiddleware") + 1,
    "accounts.middleware.SessionPolicyMiddleware",
)
MIDDLEWARE.insert(1, "csp.middleware.CSPMiddleware")
# Signed-in pages and API answers are never cached (accounts.middleware.NoStoreMiddleware).
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.contrib.sessions.middleware.SessionMiddleware") + 1,
    "accounts.middleware.NoStoreMiddleware",
)
TEMPLATES[0]["OPTIONS"]["context_processors"].append("accounts.context.security_notice")

# Content Security Policy (django-csp 4; Django 5.2 has none built in, Django 6.0 will).
# No inline script or style anywhere: a page that needs one uses the request's nonce.
from csp.constants import NONCE, NONE, SELF  # noqa: E402

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "font-src": [SELF],
        "form-action": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "frame-ancestors": [NONE],
    }
}
# HSTS: one year with subdomains. Preload is the domain owner's decision (see SILENCED below).
SECURE_HSTS_SECONDS = env_int("PSCSYNC_HSTS_SECONDS", 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = env_bool("PSCSYNC_HSTS_PRELOAD", False)
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Plain http is redirected to https whenever cookies are secure; /healthz stays reachable for
# load balancers that probe over http.
SECURE_SSL_REDIRECT = env_bool("PSCSYNC_SSL_REDIRECT", SECURE_COOKIES)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto (and strips it from clients).
if env_bool("PSCSYNC_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Client IPs: X-Forwarded-For is believed only from these proxy addresses (CIDRs allowed).
TRUSTED_PROXIES = env_list("PSCSYNC_TRUSTED_PROXIES", [])
# __Host- cookies: Secure, Path=/, no Domain, so no sibling host can set or read them.
if SECURE_COOKIES:
    SESSION_COOKIE_NAME = "__Host-sessionid"
    CSRF_COOKIE_NAME = "__Host-csrftoken"
CSRF_COOKIE_HTTPONLY = True  # the token reaches htmx through the page, never through the cookie
# Sessions: absolute lifetime is SESSION_COOKIE_AGE (above); idle timeout below.
SESSION_IDLE_SECONDS = env_int("PSCSYNC_SESSION_IDLE_SECONDS", 30 * 60)
# Roles that must pass a second factor (TOTP or a recovery code) before any page. Empty turns
# enforcement off: the page shows a warning and `check --deploy` fails (accounts.W001).
TWO_FACTOR_REQUIRED_ROLES = env_list("PSCSYNC_2FA_REQUIRED_ROLES", ["admin", "operator"])
if os.getenv("PSCSYNC_2FA_REQUIRED_ROLES") == "none":
    TWO_FACTOR_REQUIRED_ROLES = []
OTP_TOTP_ISSUER = "pscsync"
# Login throttling (accounts.throttle): free failures, then waits doubling up to a cap.
LOGIN_THROTTLE = {
    "account_free": env_int("PSCSYNC_LOGIN_ACCOUNT_FREE", 5),
    "account_cap_seconds": env_int("PSCSYNC_LOGIN_ACCOUNT_CAP", 300),
    "ip_free": env_int("PSCSYNC_LOGIN_IP_FREE", 20),
    "ip_cap_seconds": env_int("PSCSYNC_LOGIN_IP_CAP", 900),
    "window_seconds": 3600,
}
# Single sign-on with OpenID Connect (mozilla-django-oidc, accounts/oidc.py, docs/security.md):
# on when PSCSYNC_OIDC_CLIENT_ID is set. Roles and legal entities come from the provider's groups
# through the admin-editable rules at /account/sso/. PSCSYNC_LOCAL_PASSWORDS=false leaves SSO as
# the only way in (no password form, no password backend).
OIDC_ENABLED = bool(os.getenv("PSCSYNC_OIDC_CLIENT_ID"))
OIDC_PROVIDER_NAME = os.getenv("PSCSYNC_OIDC_PROVIDER_NAME", "single sign-on")
OIDC_RP_CLIENT_ID = os.getenv("PSCSYNC_OIDC_CLIENT_ID", "")
OIDC_RP_CLIENT_SECRET = os.getenv("PSCSYNC_OIDC_CLIENT_SECRET", "")
OIDC_OP_AUTHORIZATION_ENDPOINT = os.getenv("PSCSYNC_OIDC_AUTHORIZATION_ENDPOINT", "")
OIDC_OP_TOKEN_ENDPOINT = os.getenv("PSCSYNC_OIDC_TOKEN_ENDPOINT", "")
OIDC_OP_USER_ENDPOINT = os.getenv("PSCSYNC_OIDC_USERINFO_ENDPOINT", "")
OIDC_OP_JWKS_ENDPOINT = os.getenv("PSCSYNC_OIDC_JWKS_ENDPOINT", "")
OIDC_GROUPS_CLAIM = os.getenv("PSCSYNC_OIDC_GROUPS_CLAIM", "groups")
OIDC_USERNAME_CLAIM = os.getenv("PSCSYNC_OIDC_USERNAME_CLAIM", "preferred_username")
OIDC_RP_SIGN_ALGO = "RS256"
OIDC_RP_SCOPES = "openid email profile"
OIDC_USE_PKCE = True
OIDC_AUTHENTICATE_CLASS = "accounts.oidc.SignInRequestView"
OIDC_CALLBACK_CLASS = "accounts.oidc.SignInCallbackView"
LOGIN_REDIRECT_URL_FAILURE = "/login/?sso=failed"
LOCAL_PASSWORDS = env_bool("PSCSYNC_LOCAL_PASSWORDS", True)
AUTHENTICATION_BACKENDS = (["accounts.oidc.GroupMappedOIDCBackend"] if OIDC_ENABLED else []) + (
    ["django.contrib.auth.backends.ModelBackend"] if LOCAL_PASSWORDS or not OIDC_ENABLED else []
)
SILENCED_SYSTEM_CHECKS = []
if not SECURE_HSTS_PRELOAD:
    # W021 asks for HSTS preload. Preloading commits every subdomain of the firm's registered
    # domain to https for months and is the domain owner's call, not this app's; turn it on
    # with PSCSYNC_HSTS_PRELOAD=true once they decide. Everything else W021 guards is set above.
    SILENCED_SYSTEM_CHECKS.append("security.W021")
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # W040: SQLite has no covering indexes, so the workbench's index on exceptions (status, cause,
    # INCLUDE ...) is built there without its included columns; it still serves every lookup. The
    # columns are only for PostgreSQL's index-only scans at scale (docs/workbench.md).
    SILENCED_SYSTEM_CHECKS.append("models.W040")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
# collectstatic (the Dockerfile, `make demo` and the test session run it) writes each file under a
# content-hashed name with gzip copies; whitenoise serves hashed names with a far-future immutable
# max-age, so a changed file is a new URL and browsers never hold a stale chart library or style.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# The audit trail's external copy (RELIABILITY.md SEC-14): one JSON line per committed entry on
# the `pscsync.audit` logger, to a file of its own when PSCSYNC_AUDIT_LOG_FILE is set (ship it to
# a store the application cannot rewrite), else to standard error with the other logs.
AUDIT_LOG_FILE = os.getenv("PSCSYNC_AUDIT_LOG_FILE", "")
# Keys of the audit chain's HMAC, "id:base64[,id:base64]" (first signs, all verify): kept out of
# the database so a rewritten row cannot be re-chained. Unset: derived from SECRET_KEY (deploy
# check accounts.W004 warns). `python -m pscsync.crypto` prints a new key.
AUDIT_KEYS = os.getenv("PSCSYNC_AUDIT_KEYS", "")
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "line": {"format": "%(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        "audit": (
            {"class": "logging.handlers.WatchedFileHandler", "filename": AUDIT_LOG_FILE, "formatter": "line"}
            if AUDIT_LOG_FILE
            else {"class": "logging.StreamHandler", "formatter": "plain"}
        ),
    },
    "root": {"handlers": ["console"], "level": os.getenv("PSCSYNC_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "pscsync.audit": {"handlers": ["audit"], "level": "INFO", "propagate": False},
    },
}

# --- The sync engine ----------------------------------------------------------------------
# Webhook bodies above this size are refused with 413 before anything is read into memory.
WEBHOOK_MAX_BODY_BYTES = env_int("PSCSYNC_WEBHOOK_MAX_BODY_BYTES", 1024 * 1024)
# Signed timestamps further than this from our clock, either way, are refused (Standard Webhooks).
WEBHOOK_TOLERANCE_SECONDS = 300
# How long a worker owns a handoff. Longer than the task hard time limit, so a live worker never
# loses its lease mid-step; a dead worker's handoff is taken over once it expires.
TASK_HARD_TIME_LIMIT_SECONDS = env_int("PSCSYNC_TASK_TIME_LIMIT", 300)
LEASE_SECONDS = env_int("PSCSYNC_LEASE_SECONDS", TASK_HARD_TIME_LIMIT_SECONDS + 60)
# The sweeper runs this often, re-publishing due retries and handoffs whose lease expired.
SWEEP_SECONDS = env_int("PSCSYNC_SWEEP_SECONDS", 5)
# A pending handoff already published is published again only after this long (lost message).
REDISPATCH_SECONDS = env_int("PSCSYNC_REDISPATCH_SECONDS", 60)
# At most this many handoffs a worker claims at once (FOR UPDATE SKIP LOCKED) and runs one after
# the other: the claim, the steps' read and the steps' creation are one statement for the batch.
# Below it a claim is sized to about a second of work (pscsync.runner.Pace), so a handoff claimed
# by a busy worker does not wait long behind the others of its batch while other workers idle.
RUN_BATCH = env_int("PSCSYNC_RUN_BATCH", 10)
# A worker's concurrency (celery -c; the Procfile and compose read the same variable).
WORKER_CONCURRENCY = env_int("WORKER_CONCURRENCY", 4)
# Handoffs routed together are published as at most this many messages, enough to wake every
# thread or child that will claim them (pscsync.dispatch.wake_count). 0: the publishing worker's
# own concurrency; with several worker processes, set it to their threads or children in all.
WAKE_WORKERS = env_int("PSCSYNC_WAKE_WORKERS", 0)
# A worker that dies this many times on one handoff stops it: it needs a person (poison message).
MAX_WORKER_CRASHES = env_int("PSCSYNC_MAX_WORKER_CRASHES", 3)
POLL_SECONDS = env_int("PSCSYNC_POLL_SECONDS", 30)
# Reconciliation (CRM vs PSA vs ERP) runs this often: daily by default, every few minutes in the demo.
RECONCILE_SECONDS = env_int("PSCSYNC_RECONCILE_SECONDS", 24 * 3600)
# Retention (pscsync.archive): where archived bodies are written (keep it on backed-up storage),
# and how often beat looks for months past their entity's retention (a pass finds nothing new
# until a month ends, so daily is plenty).
ARCHIVE_DIR = os.getenv("PSCSYNC_ARCHIVE_DIR", "")
ARCHIVE_SECONDS = env_int("PSCSYNC_ARCHIVE_SECONDS", 24 * 3600)
FX_READ_SECONDS = env_int("PSCSYNC_FX_READ_SECONDS", 6 * 3600)
# The workbench re-checks that every handoff waiting for a person has its exception (and hands
# lost compensations and bulk jobs back to a worker) this often. It reads only open work.
EXCEPTIONS_RECONCILE_SECONDS = env_int("PSCSYNC_EXCEPTIONS_RECONCILE_SECONDS", 300)
# How often beat asks for a demand-forecast snapshot; one is kept per 7 business days whatever this
# is (dashboards.leaders), so a short interval only makes a fast business clock (the demo) get them.
DEMAND_SNAPSHOT_SECONDS = env_int("PSCSYNC_DEMAND_SNAPSHOT_SECONDS", 3600)
# First retry waits up to this many seconds (full jitter), doubling each time up to an hour.
RETRY_BASE_SECONDS = float(env_int("PSCSYNC_RETRY_BASE_SECONDS", 10))
# Connections marked "sandbox" may call loopback addresses (our own sandboxes). Off unless turned on:
# `make demo` (`python -m demo`) and the test run set PSCSYNC_ALLOW_SANDBOXES=true; production never.
ALLOW_SANDBOXES = env_bool("PSCSYNC_ALLOW_SANDBOXES", False)
# Where the demo's vendor sandboxes listen: the engine reaches them over HTTP only, at these
# addresses: each sandbox's default port on this machine plus PSCSYNC_SANDBOX_PORT_OFFSET (so a
# second demo can run its own beside the first). The defaults are the ports
# `python manage.py sandbox <name>` listens on without --port.
SANDBOX_DEFAULT_PORTS = {
    "echo": 8790,
    "salesforce": 8791,
    "kantata": 8792,
    "netsuite": 8793,
    "businesscentral": 8794,
    "dynamicsfinance": 8795,
    "kantata-de": 8796,  # the German entity's own Kantata account
}
SANDBOX_URLS = {
    name: f"http://127.0.0.1:{port + env_int('PSCSYNC_SANDBOX_PORT_OFFSET', 0)}"
    for name, port in SANDBOX_DEFAULT_PORTS.items()
}
# Injectable clock: "system", "scaled:<speed>@<ISO start>" to run business time fast in demos, or
# "file:<path>" to share a clock a simulator steers across processes (pscsync/clock.py FileClock).
CLOCK = os.getenv("PSCSYNC_CLOCK", "system")
# Named fault points for the fault tests; refused unless explicitly allowed (never in production).
FAULTS = os.getenv("PSCSYNC_FAULTS", "")
FAULTS_ALLOWED = env_bool("PSCSYNC_ALLOW_FAULTS", False)
FAULTS_DIR = VAR_DIR / "faults"

# --- Celery -------------------------------------------------------------------------------
CELERY_BROKER_URL = os.getenv("CELERY_BROKER_URL", "") or "filesystem://localhost/"
_VISIBILITY_TIMEOUT = env_int("PSCSYNC_VISIBILITY_TIMEOUT", 3600)
if CELERY_BROKER_URL.startswith("filesystem://"):
    # The embedded broker: messages are files under var/broker, so web, worker and beat
    # processes on one machine share a queue without any server.
    _broker_dir = VAR_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    # kombu's filesystem transport, writing each message whole before a worker can take it
    # (ops/broker.py: a half-written message stopped the worker).
    CELERY_BROKER_TRANSPORT = "ops.broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        # kombu's default is "control" in the working directory: the repository under `make demo`,
        # and /app in the image, which uid 10001 cannot write ("Permission denied: 'control'", the
        # demo's worker dying at start in `compose --profile demo up demo`).
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": _VISIBILITY_TIMEOUT}
# Redis redelivers an unacked message after this; it must exceed the task hard time limit, or a
# slow task runs twice (celery#2599). Checked at start-up by pscsync.checks.
VISIBILITY_TIMEOUT_SECONDS = _VISIBILITY_TIMEOUT
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Ack after the task returns, requeue when the worker child dies, take one message at a time:
# the broker is a doorbell, PostgreSQL is the ledger (RELIABILITY.md CQ-1).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = TASK_HARD_TIME_LIMIT_SECONDS
# The soft limit interrupts a step that hangs; the runner records it as an unknown outcome.
CELERY_TASK_SOFT_TIME_LIMIT = max(1, TASK_HARD_TIME_LIMIT_SECONDS - max(1, TASK_HARD_TIME_LIMIT_SECONDS // 5))
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = 10.0
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's Django fixup closes every database connection before and after every task unless this
# is set, so each task would fork a new PostgreSQL backend (about half of PostgreSQL's CPU per
# handoff). With it, a worker keeps its connection; pscsync.celery still drops a broken one, or
# one older than CONN_MAX_AGE, around every task (close_old_connections, as Django does per request).
CELERY_DB_REUSE_MAX = env_int("PSCSYNC_DB_REUSE_MAX", 1000)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
SCHEMA_CHECK_SECONDS = env_int("PSCSYNC_SCHEMA_CHECK_SECONDS", 24 * 3600)
CELERY_BEAT_SCHEDULE = {
    "sweep-handoffs": {"task": "pscsync.tasks.handoffs_sweep_task", "schedule": float(SWEEP_SECONDS)},
    "poll-connections": {"task": "pscsync.tasks.connections_poll_task", "schedule": float(POLL_SECONDS)},
    "reconcile": {"task": "pscsync.tasks.reconcile_task", "schedule": float(RECONCILE_SECONDS)},
    "archive-due": {"task": "pscsync.tasks.archive_due_task", "schedule": float(ARCHIVE_SECONDS)},
    "dashboard-rollups": {"task": "dashboards.tasks.rollups_catch_up_task", "schedule": 300.0},
    "dashboard-open-backlog": {"task": "dashboards.tasks.backlog_repair_task", "schedule": 300.0},
    "demand-snapshot": {"task": "dashboards.tasks.demand_snapshot_task", "schedule": float(DEMAND_SNAPSHOT_SECONDS)},
    # The ERPs publish rates once a business day; reading every 6 h keeps a day's rate within hours.
    "fx-rates": {"task": "dashboards.tasks.fx_rates_read_task", "schedule": float(FX_READ_SECONDS)},
    "exceptions-reconcile": {
        "task": "remediation.tasks.exceptions_reconcile_task",
        "schedule": float(EXCEPTIONS_RECONCILE_SECONDS),
    },
    "alerts-scan": {"task": "api.tasks.alerts_scan_task", "schedule": 60.0},
    # Vendors change schemas in releases and admin sessions, not by the minute: once a day.
    "schema-check": {"task": "pscsync.tasks.schema_check_task", "schedule": float(SCHEMA_CHECK_SECONDS)},
    "alerts-deliver": {"task": "api.tasks.alerts_deliver_due_task", "schedule": 30.0},
}

DEMO_PASSWORD = os.getenv("DEMO_PASSWORD", "")

# --- Caches --------------------------------------------------------------------------------
# Redis for what must be shared across web processes: REDIS_URL, else the broker when it is Redis.
REDIS_URL = os.getenv("REDIS_URL", "") or (
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else ""
)
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    # The API's per-token request counts (api.throttling): in Redis they hold across gunicorn
    # workers and machines; in process memory only for the embedded set-up without Redis.
    "throttle": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "pscsync-throttle",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "api-throttle"}
    ),
}

# --- The vendor call limiter (connectors/limiter.py; docs/engine.md, "Rate limits") ------------
# Each connection's rate_limit_per_minute and its vendor's concurrency limit, shared by every
# worker through Redis. Empty (no Redis): calls are not limited (the embedded set-up).
LIMITER_REDIS_URL = os.getenv("PSCSYNC_LIMITER_REDIS_URL", "") or REDIS_URL
# A call waits in its worker at most this long for its slot; a longer wait defers the step.
LIMITER_MAX_WAIT_SECONDS = float(env_int("PSCSYNC_LIMITER_MAX_WAIT_SECONDS", 10))
# The "minute" of rate_limit_per_minute. 60 in production; tests shorten it to see windows pass.
LIMITER_WINDOW_SECONDS = float(env_int("PSCSYNC_LIMITER_WINDOW_SECONDS", 60))

# --- REST API and outbound alerts (api/, docs/api.md) -------------------------------------
# Requests per minute per API token (per user for session requests), counted in the "throttle"
# cache above (shared through Redis when Redis is configured).
API_RATE_PER_MINUTE = env_int("PSCSYNC_API_RATE_PER_MINUTE", 600)
API_TOKEN_MAX_DAYS = env_int("PSCSYNC_API_TOKEN_MAX_DAYS", 365)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["api.auth.ApiTokenAuthentication", "api.auth.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["api.permissions.RolePermission"],
    "DEFAULT_THROTTLE_CLASSES": ["api.throttling.PerTokenRateThrottle"],
    "DEFAULT_PAGINATION_CLASS": "api.pagination.IdCursorPagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "api.schema.ApiAutoSchema",
    "EXCEPTION_HANDLER": "api.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "pscsync API",
    "DESCRIPTION": "Handoffs, events, exceptions, jobs, mappings, connections, mismatches, metrics and audit "
    "entries, with the same roles and legal-entity scope as the pages. See docs/api.md.",
    "VERSION": "1.2.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "api.schema.closed_request_bodies",
    ],
    "ENUM_NAME_OVERRIDES": {
        "HandoffStatusEnum": "pscsync.models.Handoff.Status",
        "EventStatusEnum": "pscsync.models.Event.Status",
        "StepStatusEnum": "pscsync.models.Step.Status",
        "MappingVersionStatusEnum": "pscsync.models.MappingVersion.Status",
        "MismatchStatusEnum": "pscsync.models.Mismatch.Status",
        "BulkJobStatusEnum": "remediation.models.BulkJob.Status",
        "BulkJobKindEnum": "remediation.models.BulkJob.Kind",
        "ConnectionKindEnum": "connectors.models.Connection.Kind",
        "ExceptionCauseStatusEnum": "remediation.models.ExceptionStatus",
        "ReconciliationRunStatusEnum": "pscsync.models.ReconciliationRun.Status",
    },
}
# Outbound alerts: how often a subscription gets a digest of repeats, and how deliveries retry.
ALERT_DELIVERY_MAX_ATTEMPTS = env_int("PSCSYNC_ALERT_DELIVERY_MAX_ATTEMPTS", 8)
ALERT_RETRY_BASE_SECONDS = float(env_int("PSCSYNC_ALERT_RETRY_BASE_SECONDS", 30))
# Webhook alert targets must be public https addresses; tests may allow loopback receivers.
ALERT_WEBHOOK_ALLOW_LOOPBACK = env_bool("PSCSYNC_ALERT_WEBHOOK_ALLOW_LOOPBACK", False)
DEFAULT_FROM_EMAIL = os.getenv("PSCSYNC_FROM_EMAIL", "pscsync@localhost")
EMAIL_HOST = os.getenv("PSCSYNC_EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("PSCSYNC_EMAIL_PORT", 25)

# --- Operations: health, readiness, the beat leader (docs/operations.md) --------------------
INSTALLED_APPS += ["ops.apps.OpsConfig"]
SECURE_REDIRECT_EXEMPT += [r"^readyz$"]
# Beat publishes only while it holds a lease row in the database (ops.beat), so a standby beat can
# run beside it and takes over within BEAT_LEASE_SECONDS when the leader dies.
CELERY_BEAT_SCHEDULER = "ops.beat:LeaderScheduler"
BEAT_LEASE_SECONDS = env_int("PSCSYNC_BEAT_LEASE_SECONDS", 30)
WORKER_HEARTBEAT_SECONDS = env_int("PSCSYNC_WORKER_HEARTBEAT_SECONDS", 10)
# /readyz answers 503 when the newest worker heartbeat, the beat leader's renewal or the last
# sweep is older than these.
READY_WORKER_SECONDS = env_int("PSCSYNC_READY_WORKER_SECONDS", 3 * WORKER_HEARTBEAT_SECONDS)
READY_BEAT_SECONDS = env_int("PSCSYNC_READY_BEAT_SECONDS", BEAT_LEASE_SECONDS)
READY_SWEEP_SECONDS = env_int("PSCSYNC_READY_SWEEP_SECONDS", max(60, 4 * SWEEP_SECONDS))

# Database connections (docs/operations.md, "Database connections"). On PostgreSQL every process
# but Celery's borrows from Django's psycopg pool (PSCSYNC_DB_POOL, on by default): gunicorn's
# threads share a few connections instead of holding one each. Celery processes keep one
# persistent connection each (CONN_MAX_AGE above): the prefork worker's parent uses the database
# (its heartbeat) and then forks its children, and a pool's threads and sockets do not survive a
# fork. Behind pgbouncer in transaction mode (PSCSYNC_PGBOUNCER=true) pgbouncer is the pool: no
# pool here, no persistent connections, and no server-side cursors (a cursor cannot outlive the
# transaction pgbouncer lends).
_argv0 = Path(sys.argv[0])
CELERY_PROCESS = "celery" in (_argv0.name, _argv0.parent.name)  # `celery ...` or `python -m celery ...`
PGBOUNCER = env_bool("PSCSYNC_PGBOUNCER", False)
DB_POOL = env_bool("PSCSYNC_DB_POOL", not CELERY_PROCESS and not PGBOUNCER) and DATABASES["default"]["ENGINE"].endswith(
    "postgresql"
)
if DB_POOL:
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # Django refuses persistent connections with a pool
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("PSCSYNC_DB_POOL_MIN", 2),
        "max_size": env_int("PSCSYNC_DB_POOL_MAX", 10),
        "timeout": env_int("PSCSYNC_DB_POOL_TIMEOUT", 10),
    }
if PGBOUNCER:
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True

# --- Structured logs (docs/operations.md, "Logs") ------------------------------------------
# JSON lines (one object per line, with request_id, trace_id, handoff_id, business_key, flow and
# connection where known) unless PSCSYNC_LOG_FORMAT=text, which `make demo` sets for people.
LOG_FORMAT = os.getenv("PSCSYNC_LOG_FORMAT", "json")
if LOG_FORMAT not in {"json", "text"}:
    raise ImproperlyConfigured(f"PSCSYNC_LOG_FORMAT must be 'json' or 'text', got {LOG_FORMAT!r}")
LOGGING["filters"] = {"context": {"()": "ops.logs.ContextFilter"}}
LOGGING["formatters"]["json"] = {
    "()": "ops.logs.json_formatter",
    "fmt": "%(levelname)s %(name)s %(message)s",
    "timestamp": "time",  # ISO 8601 in UTC
    "rename_fields": {"levelname": "level", "name": "logger"},
}
LOGGING["formatters"]["text"] = {
    "()": "ops.logs.TextFormatter",
    "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
}
for _handler in ("console", "audit") if not AUDIT_LOG_FILE else ("console",):
    LOGGING["handlers"][_handler]["formatter"] = LOG_FORMAT
    LOGGING["handlers"][_handler]["filters"] = ["context"]
MIDDLEWARE.insert(0, "ops.logs.RequestIdMiddleware")  # first: every later line has the request id
# Next: a webhook skips the middleware that serve people (sessions, CSRF, sign-in...); see
# connectors/middleware.py and docs/security.md, "The webhook's short way".
MIDDLEWARE.insert(1, "connectors.middleware.WebhookShortWayMiddleware")

# --- Prometheus metrics (docs/operations.md, "Metrics") -------------------------------------
# /metrics answers only a scraper sending "Authorization: Bearer <PSCSYNC_METRICS_TOKEN>" (404
# while unset). Under gunicorn or Celery prefork set PROMETHEUS_MULTIPROC_DIR to an empty folder
# shared by every process of one machine, so counters add up across processes.
METRICS_TOKEN = os.getenv("PSCSYNC_METRICS_TOKEN", "")
# The business gauges (money at risk, won-not-activated, unbilled WIP) are read at most this often.
METRICS_BUSINESS_SECONDS = env_int("PSCSYNC_METRICS_BUSINESS_SECONDS", 60)
SECURE_REDIRECT_EXEMPT += [r"^metrics$"]

# --- Traces (docs/operations.md, "Traces") ---------------------------------------------------
# OpenTelemetry is on only when an OTLP endpoint is set (the SDK's own variables: the endpoint,
# OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER...); off, nothing is
# instrumented. OTEL_SDK_DISABLED=true turns it off with the endpoint still set.
TRACING = (
    bool(os.getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.getenv("OTEL_EXPORTER_OTLP_ENDPOINT"))
    and os.getenv("OTEL_SDK_DISABLED", "false").lower() != "true"
)
# Where a person opens a trace: an address with {trace_id} in it, e.g.
# https://grafana.example.com/explore?left={"queries":[{"query":"{trace_id}"}]} or
# https://jaeger.example.com/trace/{trace_id}. Unset, the handoff page shows the id unlinked.
TRACE_URL = os.getenv("PSCSYNC_TRACE_URL", "")
if TRACE_URL and ("{trace_id}" not in TRACE_URL or not TRACE_URL.startswith(("https://", "http://"))):
    raise ImproperlyConfigured(
        f"PSCSYNC_TRACE_URL must be an http(s) address containing {{trace_id}}, got {TRACE_URL!r}"
    )
