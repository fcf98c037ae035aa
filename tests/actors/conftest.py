"""Ray fixtures: one local Ray per module (starting Ray costs seconds), sized for 2 cores."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import ray

from actors.embedded_redis import EmbeddedRedis
from tests.raycluster import start_local_ray


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    start_local_ray("hexbook-tests")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A redis-server of this module's own (its tests stop and crash it)."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def namespace() -> str:
    """A Ray namespace per test, so named shard actors never leak between tests."""
    return f"hexbook-{uuid.uuid4().hex[:8]}"
