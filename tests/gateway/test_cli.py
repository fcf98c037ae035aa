"""``hexbook up --demo`` as a newcomer runs it (``make demo``): it starts, serves, stops
cleanly on Ctrl-C, and the next start finds the bookings in the data folder."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from actors.embedded_redis import EmbeddedRedis


def start(data: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "up",
            "--demo",
            "--sites",
            "20",
            "--data-dir",
            str(data),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def printed_key(proc: subprocess.Popen[str]) -> tuple[str, list[str]]:
    """Read the start-up lines up to the printed booking-client key."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.strip().startswith("booking-client: hbk_"):
            return line.split(": ", 1)[1].strip(), lines
    raise AssertionError("no key printed:\n" + "".join(lines))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60
    )


def wait_ready(proc: subprocess.Popen[str], base: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("hexbook up did not become ready")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def redis_servers_of(data: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        except OSError:
            continue  # the process ended meanwhile
        if "redis-server" in text and str(data) in text:
            found.append(text)
    return found


def test_demo_starts_serves_stops_and_keeps_bookings(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base, data = f"http://127.0.0.1:{port}", tmp_path / "data"
    proc = start(data, port)
    try:
        key, head = printed_key(proc)
        auth = {"Authorization": f"Bearer {key}"}
        wait_ready(proc, base)
        # The three pages, and a key for each staff page (signed in as a browser would).
        printed = "".join(head)
        for name, path in (("find and book", "/"), ("launch dashboard", "/dashboard"),
                           ("site admin", "/admin")):  # fmt: skip
            assert re.search(rf"{name}: +{re.escape(base + path)}\s", printed), printed
        staff = dict(re.findall(r"^ +(operator|provider-admin): +(hbk_\S+)$", printed, re.M))
        for role, path in (("operator", "/dashboard"), ("provider-admin", "/admin/chi-0000")):
            with httpx.Client(base_url=base, follow_redirects=True) as browser:
                signed = browser.post("/signin", data={"api_key": staff[role]})
                assert signed.status_code == 200, signed.text
                assert browser.get(path).status_code == 200, (role, path)
        assert httpx.get(f"{base}/", params={"q": "60601"}).status_code == 200
        grid = httpx.get(
            f"{base}/v1/providers/chi-0000/slots", params={"service": "covid-vaccine"}
        ).json()["slots"]
        soon = datetime.now(UTC) + timedelta(hours=1)
        start_at = next(g["start"] for g in grid if datetime.fromisoformat(g["start"]) > soon)
        body = {"provider_id": "chi-0000", "service": "covid-vaccine", "start": start_at}
        assert httpx.post(f"{base}/v1/holds", json=body).status_code == 401  # needs the key
        hold = httpx.post(f"{base}/v1/holds", json=body, headers=auth).json()
        booking = httpx.post(
            f"{base}/v1/bookings",
            json={"hold_id": hold["hold_id"], "patient": {"reference": "ref"}},
            headers=auth,
        ).json()
        # Its redis-server crashes: hexbook up starts it again by itself, bookings intact.
        pid = int((data / "redis.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, "service did not come back after Redis died"
            later = next(g["start"] for g in grid if datetime.fromisoformat(g["start"]) > soon)
            retry = httpx.post(
                f"{base}/v1/holds", json={**body, "start": later}, headers=auth, timeout=30
            )
            assert retry.status_code in (201, 409, 503), retry.text
            if retry.status_code == 201:
                break
            time.sleep(0.2)
        ready = httpx.get(f"{base}/readyz").json()
        assert ready["redis_restarts"] == 1, ready
        assert "hexbook_embedded_redis_restarts 1.0" in httpx.get(f"{base}/metrics").text
        assert int((data / "redis.pid").read_text()) != pid
        # The keys CLI works against the running stack's Redis.
        made = cli("keys", "create", "--role", "operator", "--name", "ci", "--data-dir", str(data))
        assert made.returncode == 0, made.stderr
        operator = made.stdout.split()[0]
        r = httpx.get(f"{base}/v1/keys", headers={"Authorization": f"Bearer {operator}"})
        assert r.status_code == 200, r.text
        listed = cli("keys", "list", "--data-dir", str(data))
        assert "operator" in listed.stdout and "ci" in listed.stdout
        assert operator not in listed.stdout
    finally:
        out = "".join(head) + stop(proc)
    assert "provisioning" in out
    assert f"serving {base}" in out
    assert f"{base}/docs" in out
    assert f"curl '{base}/smart/$bulk-publish'" in out  # quoted: pastes into a shell
    assert out.index("provisioning") < out.index("serving") < out.index("booking-client: hbk_")
    assert "stopped cleanly" in out
    assert redis_servers_of(data) == [], "a redis-server of this data folder is still running"

    proc = start(data, port)
    try:
        new_key, head = printed_key(proc)
        wait_ready(proc, base)
        headers = {"X-Booking-Token": booking["booking_token"]}
        again = httpx.get(
            f"{base}/v1/bookings/{booking['booking_id']}",
            headers={**headers, "Authorization": f"Bearer {new_key}"},
        )
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "active"
        # The last run's demo key was revoked when this run made its own.
        old = httpx.get(f"{base}/v1/bookings/{booking['booking_id']}", headers={**headers, **auth})
        assert old.status_code == 401
    finally:
        out = "".join(head) + stop(proc)
    assert "already there (20 providers)" in out


def test_up_on_a_port_in_use_says_so_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start(tmp_path / "data", port)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert f"127.0.0.1:{port} is in use" in out and "--port" in out
    assert "serving" not in out and "key" not in out and "Traceback" not in out
    assert not (tmp_path / "data").exists()  # no Redis, no Ray were started


def test_keys_cli_explains_and_refuses_bad_input(tmp_path: Path) -> None:
    assert "--role" in cli("keys", "create", "--help").stdout
    bad = cli("keys", "create", "--role", "root", "--name", "x", "--data-dir", str(tmp_path))
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    admin = cli(
        "keys", "create", "--role", "provider-admin", "--name", "x", "--data-dir", str(tmp_path)
    )
    assert admin.returncode == 2 and "needs the providers" in admin.stderr
    # A folder with no hexbook in it: said so, and no new, empty Redis started there.
    elsewhere = cli("keys", "list", "--data-dir", str(tmp_path / "elsewhere"))
    assert elsewhere.returncode == 2 and "no hexbook in" in elsewhere.stderr, elsewhere.stderr
    assert not (tmp_path / "elsewhere").exists()
    with EmbeddedRedis(tmp_path / "data"):
        pass  # a stopped hexbook's data folder
    gone = cli("keys", "revoke", "ffffffff", "--data-dir", str(tmp_path / "data"))
    assert gone.returncode == 2 and "no key" in gone.stderr


def test_help_explains_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "up", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in (
        "--demo",
        "--port",
        "--data-dir",
        "--ray-address",
        "--redis-url",
        "--shards",
        "--fsync",
        "--sites",
        "--host",
    ):
        assert option in out


def test_up_refuses_half_a_tls_setup_and_warns_of_plain_http_beyond_loopback(
    tmp_path: Path,
) -> None:
    from gateway.server import loopback

    run = [sys.executable, "-m", "gateway.cli", "up", "--data-dir", str(tmp_path / "d")]
    half = subprocess.run([*run, "--tls-cert", "c.pem"], capture_output=True, text=True)
    assert half.returncode == 2 and "needs both --tls-cert and --tls-key" in half.stderr
    missing = subprocess.run(
        [*run, "--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode == 2 and "is not a file" in missing.stderr
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    bad = subprocess.run(
        [*run, "--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "do not load" in bad.stderr
    # Plain HTTP on every interface: said loudly, before anything starts (here the port
    # is taken, so nothing does).
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        open_ = subprocess.run(
            [*run, "--host", "0.0.0.0", "--port", str(port)], capture_output=True, text=True
        )
    assert open_.returncode == 2
    assert "WARNING: serving plain HTTP on 0.0.0.0" in open_.stderr
    assert [loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "10.0.0.5")] == [
        True, True, True, False, False,
    ]  # fmt: skip


def test_up_refuses_journal_servers_it_cannot_use_and_an_embedded_redis_on_a_cluster(
    tmp_path: Path,
) -> None:
    run = [sys.executable, "-m", "gateway.cli", "up", "--data-dir", str(tmp_path / "d")]
    cases = [
        (["--journal-redis", "localhost:6379"], "not a redis://, rediss:// or unix:// URL"),
        (["--journal-redis", "redis://:secret@127.0.0.1:1/0"], "does not answer"),
        (["--ray-address", "127.0.0.1:1"], "--ray-address needs --redis-url"),
    ]
    for extra, said in cases:
        done = subprocess.run([*run, *extra], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and said in done.stderr, (extra, done.stderr)
        assert "secret" not in done.stderr  # the password is not printed
    assert not (tmp_path / "d").exists()  # refused before anything started


def test_a_backup_names_the_journal_servers_it_does_not_hold(tmp_path: Path) -> None:
    import redis

    from actors.directory import Directory

    with EmbeddedRedis(tmp_path / "c") as control, EmbeddedRedis(tmp_path / "j") as other:
        Directory(redis.Redis.from_url(control.url)).configure(
            ["shard-0", "shard-1"], 8, [other.url]
        )
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "backup", str(tmp_path / "b.rdb"),
             "--redis-url", control.url],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "journal to 1 more Redis server(s), not in this file" in done.stderr
    assert f"hexbook backup --redis-url redis://:***@{other.where}/0 FILE" in done.stderr
