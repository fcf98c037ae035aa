"""Shared fixtures: a real redis-server per test session, started from the project's
own install (no Redis that someone else started)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, settings

from actors.embedded_redis import EmbeddedRedis
from simulators.toolkit import LocalStack, start_stack

settings.register_profile("default", deadline=None, max_examples=200)
settings.register_profile(
    "soak", deadline=None, max_examples=5000, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real redis-server (strict fsync) for the whole session."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A client of the session's server, on an emptied database."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="session")
def child_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """``hexbook up --demo`` in a child process (its own Ray and redis-server), as the
    tools' users run it; holds last 10 s (what ``hexbook-sim live --speed 60`` compresses
    the model's 5-minute holds to). Shared by the tools' tests that need a gateway of
    someone else's (``--url``)."""
    folder = tmp_path_factory.mktemp("child-stack")
    with start_stack(folder, demo_sites=60, env={"HEXBOOK_HOLD_TTL_SECONDS": "10"}) as stack:
        yield stack
