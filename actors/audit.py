"""The audit: after a run, read every shard's snapshot and journal from Redis and check
the invariants against what clients were told.

Checks (each counted, each violation listed):

- **capacity**: no slot of any calendar has more booked + held places than capacity;
- **acknowledged**: every booking a client saw acknowledged is in the journal or, once
  its day left the calendar's window, in the archive (:mod:`actors.archive`), in the
  state the client last left it (active, or cancelled by that client or by a move);
- **expired holds**: no hold was confirmed after it expired (for holds whose placing
  is still in the journal: older ones were compacted into a snapshot, and the count of
  confirms checked says how many could be);
- **idempotency**: no idempotency key produced two holds or two bookings;
- **series**: no series of doses is half booked: a confirmed series has every dose
  active, an aborted or cancelled one none (a series still in its protocol is counted,
  not judged: the sweeper finishes it), and no booking names a series that does not
  list it;
- **eligibility**: every booking admitted by a rule satisfies the version recorded with
  it, for what the patient attested.

It reads Redis only (no Ray): it can run against a stopped stack's data folder.
Acknowledgements are JSON lines, as the Locust users of :mod:`loadtests` write them:
``{"op": "booked", "booking_id": ...}``, ``{"op": "cancelled", "booking_id": ...}``,
``{"op": "rescheduled", "booking_id": old, "new_booking_id": new}``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis

from actors import archive, journal
from actors.directory import Directory, servers_of
from actors.journal import CalendarAdded, CalendarEvents, CalendarRemoved, HandOffEnded
from actors.policy import decode_rule, rules_key
from actors.sealing import Keyring
from actors.series import INFLIGHT_KEY, decode_series
from engine.calendar import Calendar
from engine.eligibility import refusals
from engine.records import Booking, HoldConfirmed, HoldPlaced
from engine.series import TERMINAL

__all__ = ["AuditReport", "audit", "read_acks"]


@dataclass
class AuditReport:
    shards: int = 0
    calendars: int = 0
    slots: int = 0
    journal_entries: int = 0
    events: int = 0
    bookings: int = 0
    archived: int = 0
    acknowledged: int = 0
    confirms_checked: int = 0
    keys_checked: int = 0
    series: int = 0
    series_in_flight: int = 0
    eligibility_checked: int = 0
    offers_checked: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        lines = [
            f"audit: {self.shards} shard{'' if self.shards == 1 else 's'}, "
            f"{self.calendars:,} calendars, {self.slots:,} slots, "
            f"{self.journal_entries:,} journal entries ({self.events:,} events)",
            f"  capacity        {self.slots:>10,} slots checked",
            f"  acknowledged    {self.acknowledged:>10,} client-acknowledged bookings checked "
            f"(of {self.bookings:,} in the journal and the archive, {self.archived:,} archived)",
            f"  expired holds   {self.confirms_checked:>10,} confirms checked against their hold",
            f"  idempotency     {self.keys_checked:>10,} keys checked",
            f"  series          {self.series:>10,} series checked ({self.series_in_flight:,} "
            "still in their protocol)",
            f"  eligibility     {self.eligibility_checked:>10,} bookings checked against "
            "their rule version",
            f"  waitlist offers {self.offers_checked:>10,} offers checked against their "
            "entry's claim (one offer per entry)",
            f"  violations      {len(self.violations):>10,}",
        ]
        lines += [f"  ! {v}" for v in self.violations[:50]]
        if len(self.violations) > 50:
            lines.append(f"  ! ... and {len(self.violations) - 50} more")
        return "\n".join(lines)


def read_acks(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Acknowledgement records from JSON-lines files (a torn last line is skipped)."""
    out = []
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a writer killed mid-line: the rest of the file stands
    return out


def _shards(client: redis.Redis) -> list[str]:
    names = set()
    for key in client.scan_iter(match="hexbook:shard:*", count=1000):
        k = key.decode() if isinstance(key, bytes) else key
        parts = k.split(":")
        if len(parts) == 4 and parts[3] in ("journal", "snapshot"):
            names.add(parts[2])
    return sorted(names)


def audit(
    client: redis.Redis, acks: Iterable[dict[str, Any]] = (), keyring: Keyring | None = None
) -> AuditReport:
    """Check the journals of the deployment whose Redis ``client`` is against ``acks``
    (``keyring`` opens what the shards sealed): those in it and those of the Redis
    servers its directory has shards journal to."""
    report = AuditReport()
    # Each shard's calendars as its journal leaves them; a provider that moved is in
    # the journals of both shards, and counts where the directory says it lives.
    by_shard: dict[str, dict[tuple[str, str], Calendar]] = {}
    parked: dict[tuple[str, str], Calendar] = {}  # handed off, not yet taken over
    hold_expiry: dict[str, int] = {}
    hold_keys: Counter[str] = Counter()
    offers: dict[str, str] = {}  # offer hold id -> waitlist entry id
    confirm_keys: Counter[str] = Counter()
    servers = servers_of(client)
    for server, shard in ((c, name) for c in servers for name in _shards(c)):
        report.shards += 1
        calendars = by_shard.setdefault(shard, {})
        raw: Any = server.get(journal.snapshot_key(shard))
        after = "0-0"
        if raw is not None:
            snap = journal.open_snapshot(raw, keyring, shard)
            after = snap.last_id
            for h_off in snap.handed:
                for cs in h_off.calendars:
                    parked[(cs.provider_id, cs.service)] = Calendar.from_snapshot(cs)
            for cs in snap.calendars:
                cal = Calendar.from_snapshot(cs)
                calendars[(cs.provider_id, cs.service)] = cal
                for h in cs.holds:
                    hold_expiry[h.hold_id] = h.expires_at
                    if h.offer is not None:
                        offers[h.hold_id] = h.offer
        key = journal.journal_key(shard)
        while True:
            rows: Any = server.xrange(key, min=f"({after}", max="+", count=500)
            if not rows:
                break
            for entry_id, fields in rows:
                after = entry_id.decode()
                report.journal_entries += 1
                for entry in journal.open_batch(fields[b"b"], keyring, shard).entries:
                    if isinstance(entry, CalendarAdded):
                        cs = entry.snapshot
                        calendars[(cs.provider_id, cs.service)] = Calendar.from_snapshot(cs)
                        for h in cs.holds:
                            hold_expiry.setdefault(h.hold_id, h.expires_at)
                        continue
                    if isinstance(entry, CalendarRemoved):  # moved away: see its new shard
                        gone = (entry.snapshot.provider_id, entry.snapshot.service)
                        calendars.pop(gone, None)
                        if entry.provider is not None:
                            parked[gone] = Calendar.from_snapshot(entry.snapshot)
                        continue
                    if isinstance(entry, HandOffEnded):
                        for ended in [c for c in parked if c[0] == entry.provider_id]:
                            del parked[ended]
                        continue
                    if not isinstance(entry, CalendarEvents):
                        continue
                    cal = calendars[(entry.provider_id, entry.service)]
                    for ev in entry.events:
                        report.events += 1
                        if isinstance(ev, HoldPlaced):
                            hold_expiry[ev.hold_id] = ev.at + ev.ttl
                            if ev.offer is not None:
                                offers[ev.hold_id] = ev.offer
                            if ev.key:
                                hold_keys[f"{entry.provider_id}/{entry.service}/{ev.key}"] += 1
                        elif isinstance(ev, HoldConfirmed):
                            expiry = hold_expiry.get(ev.hold_id)
                            if expiry is not None:
                                report.confirms_checked += 1
                                if ev.at > expiry:
                                    report.violations.append(
                                        f"booking {ev.booking_id[:16]}… confirmed at {ev.at} "
                                        f"on hold {ev.hold_id[:16]}… expired at {expiry}"
                                    )
                            if ev.key:
                                confirm_keys[f"{entry.provider_id}/{entry.service}/{ev.key}"] += 1
                    cal.replay(list(entry.events), rebuild_expiry=False)
    calendars = _served(by_shard, Directory(client).providers())
    for ck, cal in parked.items():
        calendars.setdefault(ck, cal)
    bookings: dict[str, str] = {}
    every: dict[str, tuple[Booking, Calendar | None]] = {}
    for (pid, service), cal in calendars.items():
        report.calendars += 1
        report.slots += cal.n_slots
        used = cal.booked.astype(np.int64) + cal.held.astype(np.int64)
        over = np.flatnonzero(used > cal.capacity.astype(np.int64))
        for i in over:
            report.violations.append(
                f"{pid}/{service}: slot {int(cal.start + i * cal.slot_seconds)} has "
                f"{int(used[i])} places taken of {int(cal.capacity[i])}"
            )
        for b in cal.bookings.values():
            bookings[b.booking_id] = b.status
            every[b.booking_id] = (b, cal)
    archived = (row for c in servers for row in archive.export(c, keyring))
    for pid, service, b in archived:  # days that left their windows
        bookings.setdefault(b.booking_id, b.status)
        every.setdefault(b.booking_id, (b, calendars.get((pid, service))))
        report.archived += 1
    _check_series(client, report, every, keyring)
    _check_offers(client, report, offers)
    _check_eligibility(client, report, every)
    report.bookings = len(bookings)
    for what, counts in (("holds", hold_keys), ("bookings", confirm_keys)):
        report.keys_checked += len(counts)
        for k, n in counts.items():
            if n > 1:
                report.violations.append(f"idempotency key {k!r} made {n} {what}")
    _check_acks(report, bookings, acks)
    return report


def _served(
    by_shard: dict[str, dict[tuple[str, str], Calendar]], placed: dict[str, str]
) -> dict[tuple[str, str], Calendar]:
    """One calendar per key: the one on the shard the directory names (a move cut short
    between its new shard's take-over and the directory's switch: the one there is)."""
    out: dict[tuple[str, str], Calendar] = {}
    for shard, calendars in by_shard.items():
        for key, cal in calendars.items():
            if key not in out or placed.get(key[0]) == shard:
                out[key] = cal
    return out


def _check_series(
    client: redis.Redis,
    report: AuditReport,
    every: dict[str, tuple[Booking, Calendar | None]],
    keyring: Keyring | None,
) -> None:
    listed: set[str] = set()
    for key in client.scan_iter(match="hexbook:series:*", count=1000):
        k = key.decode() if isinstance(key, bytes) else key
        if k == INFLIGHT_KEY:
            continue
        raw: Any = client.get(k)
        if raw is None:
            continue
        rec = decode_series(raw, k.removeprefix("hexbook:series:"), keyring)
        report.series += 1
        active = []
        for d in rec.doses:
            listed.add(d.booking_id)
            found = every.get(d.booking_id)
            active.append(found is not None and found[0].status == "active")
        if rec.state not in TERMINAL and rec.state != "held":
            report.series_in_flight += 1
        elif rec.state == "confirmed" and not all(active):
            report.violations.append(
                f"series {rec.series_id[:16]}… is confirmed with {sum(active)} of "
                f"{len(active)} doses active"
            )
        elif rec.state != "confirmed" and any(active):
            report.violations.append(
                f"series {rec.series_id[:16]}… is {rec.state} with {sum(active)} dose(s) active"
            )
    for b, _ in every.values():
        if b.series_id is not None and b.booking_id not in listed:
            report.violations.append(
                f"booking {b.booking_id[:16]}… names series {b.series_id[:16]}…, which does "
                "not list it"
            )


def _check_eligibility(
    client: redis.Redis, report: AuditReport, every: dict[str, tuple[Booking, Calendar | None]]
) -> None:
    for b, cal in every.values():
        if b.rule is None or b.rule_version is None or b.status != "active":
            continue
        report.eligibility_checked += 1
        raw: Any = client.hget(rules_key(b.rule), str(b.rule_version))
        if raw is None:
            report.violations.append(
                f"booking {b.booking_id[:16]}… was admitted by rule {b.rule!r} version "
                f"{b.rule_version}, which is not stored"
            )
            continue
        rule = decode_rule(raw, b.rule_version)
        day = cal.local_day(b.start) if cal is not None else Calendar.utc_day(b.start)
        reasons = refusals(rule, b.attested, day)
        if reasons:
            report.violations.append(
                f"booking {b.booking_id[:16]}… does not meet rule {b.rule!r} version "
                f"{b.rule_version} it was admitted by: {'; '.join(reasons)}"
            )


def _check_acks(
    report: AuditReport, bookings: dict[str, str], acks: Iterable[dict[str, Any]]
) -> None:
    expected: dict[str, str] = {}
    for a in acks:
        op, bid = a.get("op"), a.get("booking_id")
        if not isinstance(bid, str):
            continue
        if op == "booked":
            expected.setdefault(bid, "active")
        elif op == "cancelled":
            expected[bid] = "cancelled"
        elif op == "rescheduled":
            new = a.get("new_booking_id")
            if isinstance(new, str) and new != bid:
                expected[bid] = "cancelled"
                expected[new] = "active"
    report.acknowledged = len(expected)
    for bid, state in expected.items():
        found = bookings.get(bid)
        if found is None:
            report.violations.append(f"acknowledged booking {bid[:16]}… is not in the journal")
        elif found != state:
            report.violations.append(
                f"acknowledged booking {bid[:16]}… is {found}, the client was told {state}"
            )


def _check_offers(client: redis.Redis, report: AuditReport, offers: dict[str, str]) -> None:
    """Every waitlist offer the journals show is the one its entry's claim names: an
    entry offered two places (by two shards, or twice) would have a claim naming only
    one of them."""
    from actors import waitlist

    items = list(offers.items())
    for i in range(0, len(items), 500):
        part = items[i : i + 500]
        raws: Any = client.mget([waitlist.claim_key(entry) for _, entry in part])
        for (hold_id, entry), raw in zip(part, raws, strict=True):
            report.offers_checked += 1
            claim = waitlist.parse_claim(raw)
            if claim.hold_id != hold_id:
                report.violations.append(
                    f"waitlist entry {entry[:12]}… was offered hold {hold_id[:16]}… but its "
                    f"claim is {claim.state} for {str(claim.hold_id)[:16]}…"
                )
