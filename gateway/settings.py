"""Gateway settings: one pydantic-settings class, read from ``HEXBOOK_*`` variables."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from actors.sealing import KEYS_FILE, Keyring
from engine.errors import KeyringError

__all__ = ["Settings", "data_keyring"]


class Settings(BaseSettings):
    """Everything the gateway can be told; ``HEXBOOK_REDIS_URL=...`` and so on."""

    model_config = SettingsConfigDict(env_prefix="HEXBOOK_", extra="ignore")

    redis_url: str | None = Field(None, description="external Redis; none: embedded")
    ray_address: str | None = Field(None, description="Ray cluster; none: local Ray")
    data_dir: Path = Field(Path("data"), description="embedded Redis data folder")
    shards: int | None = Field(
        None, ge=1, le=1024, description="shards of a new deployment; none: a core each, less one"
    )
    journal_redis_urls: list[str] = Field(
        default_factory=list,
        max_length=63,
        description="more Redis servers the shards of a new deployment journal to, in turn "
        "with redis_url (ADR 0025); an existing deployment keeps its map",
    )
    namespace: str = "hexbook"
    hold_ttl_seconds: int = Field(300, ge=10, le=3600)
    # Eligibility rules and series templates are read at most this long after a change
    # made at another gateway (at once at the one that made it).
    policy_cache_seconds: float = Field(1.0, ge=0.0, le=60.0)
    # How often series left half way (a client gone mid-confirm) are finished.
    series_sweep_seconds: float = Field(30.0, gt=0.0, le=3600.0)
    # Connections to Redis for rules and series (requests beyond wait for one).
    policy_redis_connections: int = Field(64, ge=2, le=10_000)
    # How often each gateway reads the waiting rooms and one of them admits.
    room_tick_seconds: float = Field(0.5, gt=0.0, le=60.0)
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    import_max_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="body limit of POST /v1/imports (files)"
    )
    import_tick_seconds: float = Field(
        5.0, gt=0, le=3600, description="how often the gateway looks for import schedules due"
    )
    fast_path: bool = Field(
        True,
        description="serve well-formed holds, bookings and searches without FastAPI's "
        "per-request machinery (same answers; off: every request through FastAPI)",
    )
    batch_max: int = Field(1000, ge=1, description="commands per actor call at most")
    calls_per_shard: int = Field(
        1, ge=1, le=64, description="actor calls out to one shard at a time (then batches grow)"
    )
    index_first_day: date | None = Field(
        None,
        description="first UTC day the search index covers, fixed (default: yesterday on "
        "the stack's clock, moving on as days pass)",
    )
    index_days: int = Field(
        31,
        ge=1,
        le=400,
        description="UTC days the search index covers (yesterday, then the 28-day horizon "
        "and a day either side)",
    )
    key_cache_seconds: float = Field(
        5.0, ge=0, le=300, description="how long a gateway trusts a key lookup (revocation delay)"
    )
    rate_per_key: float = Field(
        5000.0, gt=0, description="requests/s per API key unless the key sets its own"
    )
    rate_per_address: float = Field(
        50.0, gt=0, description="requests/s per client address for anonymous callers"
    )
    max_inflight: int = Field(
        20_000, ge=1, description="commands waiting on shards before new ones get 503"
    )
    access_log: bool = Field(False, description="one JSON log line per request (errors always)")
    feed_max_clients: int = Field(100, ge=1, description="open live-feed streams at most")
    feed_keepalive_seconds: float = Field(
        15.0, ge=1, le=60, description="a comment line on an idle live feed this often"
    )
    shard_deadline_seconds: float = Field(
        5.0, gt=0, le=120, description="a shard that answers nothing for this long: 503"
    )
    idempotency_ttl_seconds: int = Field(
        86_400, ge=60, description="how long an Idempotency-Key stays claimed for its caller"
    )
    token_secret: SecretStr | None = Field(
        None,
        description="derives the booking token a repeated confirm shows again; none: one "
        "made at first start and kept in Redis (shared by every gateway)",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="addresses of reverse proxies whose X-Forwarded-For is believed "
        "(comma-separated in HEXBOOK_TRUSTED_PROXIES); none by default",
    )
    booking_link: str = Field(
        "https://book.example.org/?provider={provider_id}&service={service}&date={date}",
        description="SMART feed: booking-deep-link of a day's slot ({provider_id}, {service}, "
        "{date})",
    )
    data_keys: SecretStr | None = Field(
        None,
        description="data keys that seal patient data at rest, 'id:base64,...' (the last "
        "seals new values); none: HEXBOOK_DATA_KEYS_FILE, or DATA/data.keys (embedded)",
    )
    data_keys_file: Path | None = Field(
        None, description="a key file ('id base64' per line, the last current); see data_keys"
    )
    retention_days: float = Field(
        30.0,
        ge=0,
        description="patient data (attestations, contact details) is purged this many days "
        "after the appointment ends; the booking stays",
    )
    retention_sweep_seconds: float = Field(
        3600.0, gt=0, le=86400, description="how often the retention purge runs"
    )
    # Notifications (gateway/deliver.py): e-mail through SMTP, a signed webhook, or both
    # (e-mail where the patient gave an address, else the webhook); neither: none sent.
    smtp_url: str | None = Field(
        None,
        description="smtp://[user:password@]host[:port] (starttls: smtp+starttls://, "
        "implicit TLS: smtps://); none: no e-mail",
    )
    smtp_from: str = Field("hexbook <noreply@hexbook.invalid>", description="From of the mail")
    webhook_url: str | None = Field(
        None, description="receives every notice without e-mail (an SMS gateway, a front-end)"
    )
    webhook_secret: SecretStr | None = Field(
        None, description="signs the webhook's calls (HMAC-SHA256); needed with webhook_url"
    )
    notify: bool = Field(True, description="this gateway also runs a deliverer")
    notify_attempts: int = Field(8, ge=1, le=100, description="tries of a notice before its "
                                 "dead letter")  # fmt: skip
    notify_backoff_seconds: float = Field(
        0.5, gt=0, le=60, description="the first retry's wait; doubled each time, up to 60 s"
    )
    notify_concurrency: int = Field(16, ge=1, le=1000, description="deliveries in flight")
    smart_refresh_seconds: float = Field(
        10.0, ge=0, description="SMART feed: re-rendered at most this often (also its max-age)"
    )

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


def data_keyring(settings: Settings, *, embedded: bool, create: bool = False) -> Keyring:
    """The data keys of this deployment: ``data_keys``, else ``data_keys_file``, else
    (embedded Redis only) ``data_dir/data.keys``, made with one key when ``create``
    (``hexbook up``). An external Redis without keys is refused: patient data must not
    reach it clear, and every process of a deployment must hold the same keys."""
    keys = settings.data_keys.get_secret_value() if settings.data_keys else None
    ring = Keyring.load(
        keys=keys,
        file=settings.data_keys_file,
        data_dir=settings.data_dir if embedded else None,
        create=create,
    )
    if ring is None:
        if embedded:
            raise KeyringError(
                f"no data keys in {settings.data_dir / KEYS_FILE}: is this the data folder "
                "of a hexbook stack? (`hexbook up` makes them at its first start)"
            )
        raise KeyringError(
            "an external Redis needs data keys: set HEXBOOK_DATA_KEYS (`hexbook keyring "
            "new` prints one) or HEXBOOK_DATA_KEYS_FILE, the same on every gateway"
        )
    return ring
