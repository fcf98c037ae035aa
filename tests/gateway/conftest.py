"""A running gateway over real HTTP: uvicorn on a free port, real Ray, real Redis."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import redis
from fastapi import FastAPI

from actors.api import Hexbook
from actors.embedded_redis import EmbeddedRedis
from actors.sealing import Keyring
from gateway.app import create_app
from gateway.keys import KeyStore
from gateway.server import in_thread
from gateway.settings import Settings
from tests.dates import dst_saturday
from tests.polling import until
from tests.raycluster import start_local_ray


def serving(app: FastAPI) -> contextlib.AbstractContextManager[str]:
    """Serve ``app`` as ``hexbook up`` does, on a free port. Clients here reuse pooled
    connections: never let the server close one as idle mid-test (uvicorn's 5 s default
    races with reuse on a loaded CI machine)."""
    return in_thread(app, keep_alive_seconds=120)


def serving_tls(app: FastAPI, tls: tuple[Path, Path]) -> contextlib.AbstractContextManager[str]:
    """:func:`serving` over HTTPS with ``tls`` = (certificate, key)."""
    return in_thread(app, keep_alive_seconds=120, tls=tls)


@pytest.fixture(scope="module")
def gateway_settings() -> dict[str, Any]:
    """Settings a test module wants for its gateway (override in the module)."""
    return {}


@pytest.fixture(scope="module")
def shard_options() -> dict[str, Any]:
    """ShardActor options a test module wants (override in the module)."""
    return {}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    gateway_settings: dict[str, Any],
    shard_options: dict[str, Any],
) -> Iterator[tuple[str, Hexbook, FastAPI]]:
    start_local_ray("hexbook-gw")
    try:
        with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
            hb = Hexbook.connect(
                server.url,
                shards=2,
                namespace=f"gw-{uuid.uuid4().hex[:6]}",
                shard_options=shard_options,
                keyring=Keyring.generate(),  # sealed at rest, as `hexbook up` runs
            )
            defaults: dict[str, Any] = {
                "max_body_bytes": 8192,
                "index_first_day": dst_saturday() - timedelta(days=1),
                "index_days": 4,
            }
            settings = Settings(redis_url=server.url, **{**defaults, **gateway_settings})
            app = create_app(settings, hexbook=hb)
            with serving(app) as url:
                yield url, hb, app
            hb.close()
            client = redis.Redis.from_url(server.url)
            client.flushdb()
            client.close()
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def keys(stack: tuple[str, Hexbook, FastAPI]) -> dict[str, str]:
    """One API key per role, made the way the CLI makes them (straight into Redis)."""
    store = KeyStore(stack[1].redis)
    made = {
        "operator": store.create("operator", "tests")[0],
        "booking-client": store.create("booking-client", "tests")[0],
        "provider-admin": store.create("provider-admin", "tests", ("clinic-*",))[0],
    }
    return made


def _client(url: str, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as client:
        yield client


@pytest.fixture(scope="module")
def api(stack: tuple[str, Hexbook, FastAPI], keys: dict[str, str]) -> Iterator[httpx.Client]:
    """A booking front-end: a booking-client key."""
    yield from _client(stack[0], keys["booking-client"])


@pytest.fixture(scope="module")
def ops(stack: tuple[str, Hexbook, FastAPI], keys: dict[str, str]) -> Iterator[httpx.Client]:
    """An operator."""
    yield from _client(stack[0], keys["operator"])


@pytest.fixture(scope="module")
def base(stack: tuple[str, Hexbook, FastAPI], ops: httpx.Client) -> str:
    """The stack with three providers put through the API."""
    from tests.gateway.test_api import SCHEDULE

    url, _, app = stack
    for pid, lat in (("clinic-1", 41.88), ("clinic-2", 41.95), ("race", 41.80)):
        r = ops.put(f"/v1/providers/{pid}", json={**SCHEDULE, "lat": lat})
        assert r.status_code in (200, 201), r.text
    # The search index (and the feed rendered from it) learns of a new calendar from the
    # stream, read every 50 ms: tests start once it has all three.
    index = app.state.runtime.index
    wanted = {(pid, "vaccine") for pid in ("clinic-1", "clinic-2", "race")}
    until(lambda: wanted <= index.calendars(), 30, every=0.02)
    return url
