"""Process-wide settings, read once from the environment.

Every knob has an embedded default so `make run` works on a bare laptop; production
overrides them with env vars (see README "Configuration").
"""

from __future__ import annotations

import functools
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


def _env_floats(name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    return tuple(float(part) for part in raw.split(",") if part.strip())


def _env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _simulator_root() -> str:
    """The simulated provider's base URL (it also stands in for Ahrefs and Stripe)."""
    return (os.environ.get("OPENAI_BASE_URL") or "http://127.0.0.1:8900/v1").rsplit("/v1", 1)[0]


def _env_ports(name: str) -> frozenset[int]:
    """A comma-separated list of TCP ports; a bad entry fails loudly at startup."""
    ports = set()
    for part in (os.environ.get(name) or "").split(","):
        if not part.strip():
            continue
        if not part.strip().isdigit() or not 0 < int(part) < 65536:
            raise ValueError(f"{name}: {part.strip()!r} is not a port number (1-65535)")
        ports.add(int(part))
    return frozenset(ports)


def _default_database_url() -> str:
    return f"sqlite:///{ROOT / 'var' / 'aijobs.db'}"


@functools.cache
def _local_secret() -> str:
    """Without SECRET_KEY, one random key kept in var/ so every local process agrees."""
    path = ROOT / "var" / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f"secret_key.{os.getpid()}")
        draft.write_text(secrets.token_urlsafe(48))
        draft.chmod(0o600)
        try:
            os.link(draft, path)  # atomic: the first process to link wins
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


@dataclass(frozen=True)
class Settings:
    database_url: str = field(
        default_factory=lambda: os.environ.get("DATABASE_URL") or _default_database_url()
    )
    redis_url: str = field(
        default_factory=lambda: os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    )
    broker_url: str = field(
        default_factory=lambda: (
            os.environ.get("CELERY_BROKER_URL")
            or os.environ.get("REDIS_URL")
            or "redis://127.0.0.1:6379/0"
        )
    )
    openai_base_url: str = field(
        default_factory=lambda: os.environ.get("OPENAI_BASE_URL") or "http://127.0.0.1:8900/v1"
    )
    # The simulated provider accepts any key; a real key switches nothing but the URL.
    openai_api_key: str = field(
        default_factory=lambda: os.environ.get("OPENAI_API_KEY") or "sk-simulated"
    )
    # Keyword research API; by default the simulated provider's /ahrefs stand-in.
    ahrefs_api_url: str = field(
        default_factory=lambda: os.environ.get("AHREFS_API_URL") or _simulator_root() + "/ahrefs"
    )
    ahrefs_api_key: str = field(default_factory=lambda: os.environ.get("AHREFS_API_KEY") or "")
    # One call's whole deadline and largest answer (both: a 502, the query given back), and
    # the calls one API process runs at once (beyond: a 503), so a slow service cannot
    # take every API thread.
    ahrefs_timeout_seconds: float = field(
        default_factory=lambda: _env_float("AHREFS_TIMEOUT_SECONDS", 20)
    )
    ahrefs_max_response_bytes: int = field(
        default_factory=lambda: _env_int("AHREFS_MAX_RESPONSE_BYTES", 1_000_000)
    )
    ahrefs_max_concurrent: int = field(default_factory=lambda: _env_int("AHREFS_MAX_CONCURRENT", 4))
    admin_token: str = field(default_factory=lambda: os.environ.get("ADMIN_TOKEN") or "")
    # Stripe Checkout for purchases; without a key, purchases are confirmed by an admin.
    stripe_api_key: str = field(default_factory=lambda: os.environ.get("STRIPE_API_KEY") or "")
    stripe_webhook_secret: str = field(
        default_factory=lambda: os.environ.get("STRIPE_WEBHOOK_SECRET") or ""
    )
    # The Stripe API; by default the simulated provider's stand-in (a real key needs
    # STRIPE_API_BASE=https://api.stripe.com).
    stripe_api_base: str = field(
        default_factory=lambda: os.environ.get("STRIPE_API_BASE") or _simulator_root() + "/stripe"
    )
    stripe_success_url: str = field(
        default_factory=lambda: (
            os.environ.get("STRIPE_SUCCESS_URL") or "http://localhost:5000/v1/billing/payments"
        )
    )
    stripe_cancel_url: str = field(
        default_factory=lambda: (
            os.environ.get("STRIPE_CANCEL_URL") or "http://localhost:5000/v1/billing/payments"
        )
    )
    # Seconds a Stripe-Signature timestamp stays acceptable (older: a replay, refused).
    stripe_webhook_tolerance: int = field(
        default_factory=lambda: _env_int("STRIPE_WEBHOOK_TOLERANCE", 300)
    )
    webhook_allow_private_urls: bool = field(
        default_factory=lambda: _env_bool("WEBHOOK_ALLOW_PRIVATE_URLS")
    )
    # Ports of the stack's own services (API, Flower, Redis, provider, database): never a
    # webhook target on any host, even with private URLs allowed. `make run` fills it.
    webhook_deny_ports: frozenset[int] = field(
        default_factory=lambda: _env_ports("WEBHOOK_DENY_PORTS")
    )
    # Seconds to wait before each retry (about a day in all); tests shorten it.
    webhook_retry_schedule: tuple[float, ...] = field(
        default_factory=lambda: _env_floats(
            "WEBHOOK_RETRY_SCHEDULE", (5, 300, 1800, 7200, 18000, 36000, 36000)
        )
    )
    webhook_timeout_seconds: float = field(
        default_factory=lambda: float(os.environ.get("WEBHOOK_TIMEOUT_SECONDS") or 15)
    )
    # Attempts of one account to one endpoint (scheme, host, port) in flight at once across
    # every worker; more wait their turn (workers/webhook_slots.py). 0: no cap.
    webhook_max_per_endpoint: int = field(
        default_factory=lambda: _env_int("WEBHOOK_MAX_PER_ENDPOINT", 4)
    )
    # After a secret rotation, the previous secret keeps signing for this long.
    webhook_secret_grace_seconds: int = field(
        default_factory=lambda: _env_int("WEBHOOK_SECRET_GRACE_SECONDS", 24 * 3600)
    )
    # Beat: the hold sweeper (and webhook requeue) interval, and the lifecycle tasks'.
    sweep_interval_seconds: float = field(
        default_factory=lambda: float(os.environ.get("SWEEP_INTERVAL_SECONDS") or 60)
    )
    lifecycle_interval_seconds: float = field(
        default_factory=lambda: float(os.environ.get("LIFECYCLE_INTERVAL_SECONDS") or 3600)
    )
    trial_warning_days: int = field(default_factory=lambda: _env_int("TRIAL_WARNING_DAYS", 3))
    # Time limits nest: task soft limit < hard limit < broker visibility < hold TTL,
    # so a hold never expires while a live worker may still settle it.
    task_soft_time_limit: int = field(default_factory=lambda: _env_int("TASK_SOFT_TIME_LIMIT", 300))
    task_time_limit: int = field(default_factory=lambda: _env_int("TASK_TIME_LIMIT", 330))
    visibility_timeout: int = field(
        default_factory=lambda: _env_int("BROKER_VISIBILITY_TIMEOUT", 600)
    )
    # How often a worker looks for unacked messages past the visibility timeout.
    broker_restore_interval: int = field(
        default_factory=lambda: _env_int("BROKER_RESTORE_INTERVAL", 10)
    )
    hold_ttl_seconds: int = field(default_factory=lambda: _env_int("HOLD_TTL_SECONDS", 900))
    provider_timeout_seconds: int = field(
        default_factory=lambda: _env_int("PROVIDER_TIMEOUT_SECONDS", 60)
    )
    provider_max_attempts: int = field(default_factory=lambda: _env_int("PROVIDER_MAX_ATTEMPTS", 4))
    provider_retry_max_wait: float = field(
        default_factory=lambda: float(os.environ.get("PROVIDER_RETRY_MAX_WAIT") or 8.0)
    )
    max_request_bytes: int = field(
        default_factory=lambda: _env_int("MAX_REQUEST_BYTES", 256 * 1024)
    )
    trial_days: int = field(default_factory=lambda: _env_int("TRIAL_DAYS", 14))
    # Per-account request limits (per plan); off only for test rigs that poll hard.
    rate_limits_enabled: bool = field(
        default_factory=lambda: _env_bool("RATE_LIMITS_ENABLED", default=True)
    )
    # Sign-up and login throttles (api/auth_throttle.py); test rigs that register freely
    # switch them off. Rates are `limits` strings ("20/hour", "50 per 15 minutes").
    auth_throttle_enabled: bool = field(
        default_factory=lambda: _env_bool("AUTH_THROTTLE_ENABLED", default=True)
    )
    register_rate_per_address: str = field(
        default_factory=lambda: os.environ.get("REGISTER_RATE_PER_ADDRESS") or "20/hour"
    )
    register_rate_per_email: str = field(
        default_factory=lambda: os.environ.get("REGISTER_RATE_PER_EMAIL") or "5/hour"
    )
    trials_per_address_per_day: int = field(
        default_factory=lambda: _env_int("TRIALS_PER_ADDRESS_PER_DAY", 10)
    )
    login_rate_per_address: str = field(
        default_factory=lambda: os.environ.get("LOGIN_RATE_PER_ADDRESS") or "60/minute"
    )
    login_failures_per_email: str = field(
        default_factory=lambda: os.environ.get("LOGIN_FAILURES_PER_EMAIL") or "50 per 15 minutes"
    )
    login_lockout_after: int = field(default_factory=lambda: _env_int("LOGIN_LOCKOUT_AFTER", 5))
    login_lockout_seconds: int = field(
        default_factory=lambda: _env_int("LOGIN_LOCKOUT_SECONDS", 30)
    )
    login_lockout_max_seconds: int = field(
        default_factory=lambda: _env_int("LOGIN_LOCKOUT_MAX_SECONDS", 900)
    )
    # Proxies in front of the API whose X-Forwarded-For to trust (0: use the peer address).
    trusted_proxies: int = field(default_factory=lambda: _env_int("TRUSTED_PROXIES", 0))
    secret_key: str = field(default_factory=lambda: os.environ.get("SECRET_KEY") or _local_secret())
    # Bearer token for GET /metrics; unset leaves it open (scrape from a private network).
    metrics_token: str = field(default_factory=lambda: os.environ.get("METRICS_TOKEN") or "")
    login_token_ttl_seconds: int = field(
        default_factory=lambda: _env_int("LOGIN_TOKEN_TTL_SECONDS", 12 * 3600)
    )
    # Team invitations: how long a token is good for, and (development only) whether it
    # is logged and returned to the inviter instead of being delivered some other way.
    invitation_ttl_hours: int = field(default_factory=lambda: _env_int("INVITATION_TTL_HOURS", 72))
    invite_tokens_in_response: bool = field(
        default_factory=lambda: _env_bool("INVITE_TOKENS_IN_RESPONSE")
    )
    # The keyword library's CSV import streams its body; this bounds it (other bodies:
    # MAX_REQUEST_BYTES).
    keyword_import_max_bytes: int = field(
        default_factory=lambda: _env_int("KEYWORD_IMPORT_MAX_BYTES", 200 * 1024 * 1024)
    )

    # --- jobs in flight (README "Concurrency" and "Nothing in flight is lost") ---
    # AI workers wait on the network: Celery's threads pool, hundreds of jobs per process.
    worker_pool: str = field(default_factory=lambda: os.environ.get("WORKER_POOL") or "threads")
    worker_concurrency: int = field(default_factory=lambda: _env_int("WORKER_CONCURRENCY", 500))
    # PostgreSQL connections per process; threads hold one only for a short transaction.
    db_pool_size: int = field(default_factory=lambda: _env_int("DB_POOL_SIZE", 20))
    db_max_overflow: int = field(default_factory=lambda: _env_int("DB_MAX_OVERFLOW", 20))
    # A connect to a server that accepts and never answers fails after this (libpq: >= 2 s).
    db_connect_timeout_seconds: int = field(
        default_factory=lambda: _env_int("DB_CONNECT_TIMEOUT_SECONDS", 5)
    )
    # No new provider attempt after this long (the threads pool has no task time limits).
    provider_deadline_seconds: float = field(
        default_factory=lambda: _env_float("PROVIDER_DEADLINE_SECONDS", 300.0)
    )
    # Shared provider limits per model (0 = none): see workers/ratelimit.py.
    provider_rpm: int = field(default_factory=lambda: _env_int("PROVIDER_RPM", 0))
    provider_tpm: int = field(default_factory=lambda: _env_int("PROVIDER_TPM", 0))
    provider_model_limits: str = field(
        default_factory=lambda: os.environ.get("PROVIDER_MODEL_LIMITS") or ""
    )
    provider_rate_window_seconds: float = field(
        default_factory=lambda: _env_float("PROVIDER_RATE_WINDOW_SECONDS", 60.0)
    )
    # A job waits at most this long for the limiter in all before it fails, uncharged.
    provider_rate_max_wait_seconds: float = field(
        default_factory=lambda: _env_float("PROVIDER_RATE_MAX_WAIT_SECONDS", 1800.0)
    )
    heartbeat_interval_seconds: float = field(
        default_factory=lambda: _env_float("HEARTBEAT_INTERVAL_SECONDS", 10.0)
    )
    # A running job without a heartbeat this long is presumed dead: it may be run again.
    heartbeat_stale_seconds: float = field(
        default_factory=lambda: _env_float("HEARTBEAT_STALE_SECONDS", 45.0)
    )
    reconcile_interval_seconds: float = field(
        default_factory=lambda: _env_float("RECONCILE_INTERVAL_SECONDS", 60.0)
    )
    # A dispatched job not started this long may have lost its message: send it again.
    dispatch_stale_seconds: float = field(
        default_factory=lambda: _env_float("DISPATCH_STALE_SECONDS", 45.0)
    )
    # Runs of one job that may die (worker killed) before it fails uncharged.
    job_max_attempts: int = field(default_factory=lambda: _env_int("JOB_MAX_ATTEMPTS", 5))
    # A dispatched job still queued (no worker took it) this long fails uncharged with
    # `queue_timeout`; until then waiting is not lost work and its hold stays (the sweeper).
    job_max_queue_seconds: int = field(
        default_factory=lambda: _env_int("JOB_MAX_QUEUE_SECONDS", 24 * 3600)
    )
    # After the provider answered, keep retrying the settle this long (database down).
    settle_retry_seconds: float = field(
        default_factory=lambda: _env_float("SETTLE_RETRY_SECONDS", 300.0)
    )


@functools.cache
def get_settings() -> Settings:
    """Read once per process: the environment is fixed once a server or worker runs, and
    a fresh read of ~70 variables cost every request ~0.1 ms a call (several calls per
    request). `reload_settings()` reads it again: the app factory calls it, and the test
    suite after every `monkeypatch.setenv`."""
    return Settings()


def reload_settings() -> Settings:
    """Forget the cached settings and read the environment again."""
    get_settings.cache_clear()
    return get_settings()
