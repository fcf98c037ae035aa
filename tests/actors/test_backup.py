"""Backups of a running stack under load (``hexbook up`` in a child process, real Ray and
redis-server): restored into a new folder, every booking acknowledged before the backup
began is there and the audit passes on the restored data."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulators.toolkit import LocalStack, start_stack
from tests.polling import until

pytestmark = pytest.mark.integration


def hexbook(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


class Bookers:
    """Clients booking the demo city's slots until told to stop; every booking they are
    told about, with the time it was acknowledged."""

    def __init__(self, url: str, key: str, n: int = 4) -> None:
        self.url, self.key = url, key
        self.acks: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(n)]

    def run(self, i: int) -> None:
        auth = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=auth, timeout=30) as c:
            grid = c.get(f"/v1/providers/chi-{i:04d}/slots",
                         params={"service": "covid-vaccine"}).json()["slots"]  # fmt: skip
            for n, slot in enumerate(s for s in grid if s["remaining"] > 0):
                if self.stop.is_set():
                    return
                body = {"provider_id": f"chi-{i:04d}", "service": "covid-vaccine",
                        "start": slot["start"]}  # fmt: skip
                hold = c.post("/v1/holds", json=body)
                if hold.status_code != 201:
                    continue
                key = f"backup-{i}-{n}"
                done = c.post(
                    "/v1/bookings",
                    json={"hold_id": hold.json()["hold_id"], "patient": {"reference": key}},
                    headers={"Idempotency-Key": key},
                )
                if done.status_code == 201:
                    self.acks.append({"op": "booked", "booking_id": done.json()["booking_id"],
                                      "key": key, "t": time.time()})  # fmt: skip

    def __enter__(self) -> Bookers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


@pytest.fixture
def child_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """A stack of this test's own, stopped when it ends: the session's shared one
    (tests/conftest.py) would keep a second local Ray beside the in-process ones of the
    tests that follow here."""
    with start_stack(tmp_path / "stack", demo_sites=8) as stack:
        yield stack


def test_a_backup_under_load_restores_every_acknowledged_booking(
    child_stack: LocalStack, tmp_path: Path
) -> None:
    backup, restored = tmp_path / "hexbook.rdb", tmp_path / "restored"
    data = str(child_stack.data_dir)
    keys_file = child_stack.data_dir / "data.keys"
    assert keys_file.stat().st_mode & 0o777 == 0o600  # made at the first start
    first_key = keys_file.read_text().split()[-2]
    with Bookers(child_stack.url, child_stack.keys["booking-client"]) as load:
        # under way: 20 bookings acknowledged (the bookers must not have stopped)
        until(lambda: len(load.acks) >= 20 or not all(t.is_alive() for t in load.threads), 120)
        # A key rotated while it books: the running shards seal with the new key at once,
        # and older values stay readable; re-encryption leaves only the new key.
        rotated = hexbook("keyring", "rotate", "--data-dir", data)
        assert rotated.returncode == 0, rotated.stderr
        assert "running shard(s) seal with" in rotated.stdout
        new_key = keys_file.read_text().split()[-2]
        assert new_key != first_key and first_key in keys_file.read_text()
        until(lambda: len(load.acks) >= 40 or not all(t.is_alive() for t in load.threads), 120)
        assert len(load.acks) >= 40, "the bookers stopped"
        redone = hexbook("keyring", "reencrypt", "--data-dir", data)
        assert redone.returncode == 0, redone.stderr
        status = hexbook("keyring", "status", "--data-dir", data)
        rows = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines()[1:]}
        assert rows[first_key] == "0" and int(rows[new_key].replace(",", "")) > 0, status.stdout
        before = list(load.acks)  # acknowledged before the backup began
        made = hexbook("backup", str(backup), "--data-dir", str(child_stack.data_dir))
        after = len(load.acks)
    assert made.returncode == 0, made.stderr
    assert after > len(before)  # the stack went on booking while it was copied
    assert backup.stat().st_mode & 0o777 == 0o600
    assert backup.read_bytes()[:5] == b"REDIS"
    # Restore into a new folder; the audit on the restored data finds every booking
    # acknowledged before the backup began, and nothing over capacity.
    done = hexbook("restore", str(backup), "--data-dir", str(restored), "--data-keys",
                   str(keys_file))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"with data key {new_key}" in done.stdout
    assert (restored / "data.keys").read_text() == keys_file.read_text()
    acks = tmp_path / "acks.jsonl"
    acks.write_text("".join(json.dumps(a) + "\n" for a in before))
    audit = hexbook("audit", "--data-dir", str(restored), "--acks", str(acks))
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert f"acknowledged    {len(before):>10,} client-acknowledged" in audit.stdout
    assert "violations               0" in audit.stdout
    # The restored folder is locked with a password of its own, and a second restore
    # into it is refused: it is not empty.
    assert (restored / "redis.secret").read_text() != (
        child_stack.data_dir / "redis.secret"
    ).read_text()
    again = hexbook("restore", str(backup), "--data-dir", str(restored))
    assert again.returncode == 2 and "already holds data" in again.stderr
    # Without its data keys, a restore says what is missing, and the audit cannot read it.
    keyless = tmp_path / "keyless"
    bare = hexbook("restore", str(backup), "--data-dir", str(keyless))
    assert bare.returncode == 0 and f"sealed with data key(s) {new_key}" in bare.stderr
    unread = hexbook("audit", "--data-dir", str(keyless))
    assert unread.returncode == 2 and "no data keys" in unread.stderr
    # A file that is not a backup is said to be one line.
    bad = tmp_path / "bad.rdb"
    bad.write_text("hello")
    refused = hexbook("restore", str(bad), "--data-dir", str(tmp_path / "x"))
    assert refused.returncode == 2 and "not a hexbook backup" in refused.stderr
