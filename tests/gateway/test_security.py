"""Security on a running stack (real Ray, real redis-server): HTTPS with the secure
headers, and the audit trail of every admin action (docs/security.md)."""

from __future__ import annotations

import csv
import io
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from actors.api import Hexbook
from tests.gateway.conftest import serving_tls
from tests.gateway.test_api import SCHEDULE, slots
from tests.redis_values import every_value

pytestmark = pytest.mark.integration


def test_every_admin_action_is_one_entry_with_the_acting_key(
    stack: tuple[str, Hexbook, FastAPI],
    base: str,
    api: httpx.Client,
    ops: httpx.Client,
    keys: dict[str, str],
) -> None:
    _, hb, _ = stack
    ops_id = keys["operator"].split("_")[1]
    admin_id = keys["provider-admin"].split("_")[1]
    seen = ops.get("/v1/audit", params={"limit": 1000}).json()
    last = seen[-1]["id"] if seen else None
    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {keys['provider-admin']}"}
    ) as admin:
        expected: list[tuple[str, str, str, str]] = []  # who, action, target, outcome

        def did(who: str, action: str, target: str, outcome: str = "ok") -> None:
            expected.append((f"key:{who}", action, target, outcome))

        assert ops.put("/v1/providers/audit-1", json=SCHEDULE).status_code == 201
        did(ops_id, "provider.put", "provider_id=audit-1")
        assert admin.put("/v1/providers/clinic-9", json=SCHEDULE).status_code == 201
        did(admin_id, "provider.put", "provider_id=clinic-9")
        assert admin.put("/v1/providers/audit-2", json=SCHEDULE).status_code == 403
        did(admin_id, "provider.put", "provider_id=audit-2", "refused")
        made = ops.post("/v1/keys", json={"role": "booking-client", "name": "audited"}).json()
        did(ops_id, "key.create", f"key_id={made['key_id']}")
        assert ops.delete(f"/v1/keys/{made['key_id']}").status_code == 200
        did(ops_id, "key.revoke", f"key_id={made['key_id']}")
        start = slots(api, "audit-1")[0]["start"]
        hold = api.post("/v1/holds", json={"provider_id": "audit-1", "service": "vaccine",
                                          "start": start}).json()  # fmt: skip
        confirm = {"hold_id": hold["hold_id"], "patient": {"reference": "p-1"}}
        booking = api.post("/v1/bookings", json=confirm).json()
        bid = booking["booking_id"]
        token = {"X-Booking-Token": booking["booking_token"]}
        assert api.get(f"/v1/bookings/{bid}", headers=token).status_code == 200  # a patient's
        assert ops.get(f"/v1/bookings/{bid}").status_code == 200
        did(ops_id, "booking.read", f"booking_id={bid}")
        assert ops.delete(f"/v1/bookings/{bid}").status_code == 204
        did(ops_id, "booking.cancel", f"booking_id={bid}")
        room = {"room_id": "audited", "service": "vaccine", "lat": 41.88, "lng": -87.63,
                "radius_km": 5, "opens_at": "2099-01-01T00:00:00Z", "per_minute": 60}  # fmt: skip
        assert ops.post("/v1/rooms", json=room).status_code == 201
        did(ops_id, "room.open", "room_id=audited")
        assert ops.patch("/v1/rooms/audited", json={"per_minute": 30}).status_code == 200
        did(ops_id, "room.change", "room_id=audited")
        csv_sites = "id,name,lat,lng,timezone\n"
        imported = ops.post("/v1/imports", json={"connector": "csv", "content": csv_sites})
        assert imported.status_code in (200, 422), imported.text
        did(ops_id, "import.run", "", "ok" if imported.status_code == 200 else "refused")
    # One command-line key, made as `hexbook keys create` makes it.
    cli = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", "create", "--role", "operator",
         "--name", "audited-cli", "--redis-url", hb.redis_url],
        capture_output=True, text=True,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    cli_id = cli.stdout.split("_")[1]
    params: dict[str, Any] = {"limit": 1000, **({"after": last} if last else {})}
    got = ops.get("/v1/audit", params=params).json()
    assert [(e["who"], e["action"], e["target"], e["outcome"]) for e in got[:-1]] == expected
    assert got[-1]["action"] == "key.create" and got[-1]["target"] == f"key_id={cli_id}"
    assert got[-1]["who"].startswith("cli:") and got[-1]["status"] == 0
    assert all(e["at"].endswith("+00:00") for e in got)
    # CSV, the same entries; read only; operators only.
    rows = list(
        csv.DictReader(io.StringIO(ops.get("/v1/audit", params={**params, "format": "csv"}).text))
    )
    assert [r["id"] for r in rows] == [e["id"] for e in got]
    for method in ("DELETE", "PUT", "PATCH", "POST"):
        assert ops.request(method, "/v1/audit").status_code == 405
    assert api.get("/v1/audit").status_code == 403
    # The command line prints the same trail.
    printed = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit-log", "--csv", "--redis-url", hb.redis_url],
        capture_output=True, text=True,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert [r["id"] for r in csv.DictReader(io.StringIO(printed.stdout))][-len(got) :] == [
        e["id"] for e in got
    ]


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM), made here."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hexbook test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_serves_what_http_serves_with_the_secure_headers(
    stack: tuple[str, Hexbook, FastAPI], base: str, keys: dict[str, str], tmp_path: Path
) -> None:
    """The stack over TLS (a self-signed certificate): the same answers as over plain
    HTTP, HSTS over TLS only, and nosniff, frame and CSP headers on every answer (the
    fast path's, the problems', the pages')."""
    from gateway.app import create_app
    from gateway.settings import Settings

    _, hb, _ = stack
    cert, key = _self_signed(tmp_path)
    settings = Settings(redis_url=hb.redis_url, index_first_day=None, index_days=20)
    search = "/v1/search?lat=41.88&lng=-87.63&service=covid-vaccine&radius_km=20"
    asks = [
        ("GET", "/healthz", None), ("GET", "/readyz", None), ("GET", "/openapi.json", None),
        ("GET", "/docs", None), ("GET", search, None), ("GET", "/v1/search?lat=x", None),
        ("GET", "/v1/bookings/bk_nobody", "booking-client"),
        ("POST", "/v1/holds", "booking-client"), ("GET", "/v1/keys", "operator"),
    ]  # fmt: skip
    with serving_tls(create_app(settings, hexbook=hb), (cert, key)) as tls_url:
        assert tls_url.startswith("https://")
        with (
            httpx.Client(base_url=base, timeout=30) as plain,
            httpx.Client(
                base_url=tls_url, verify=ssl.create_default_context(cafile=cert), timeout=30
            ) as secure,
        ):
            for method, path, role in asks:
                headers = {"Authorization": f"Bearer {keys[role]}"} if role else {}
                body = {"provider_id": "nope", "service": "x", "start": "2030-01-01T00:00:00Z"}
                kw: dict[str, Any] = {"json": body} if method == "POST" else {}
                a = plain.request(method, path, headers=headers, **kw)
                b = secure.request(method, path, headers=headers, **kw)
                assert a.status_code == b.status_code, (path, a.status_code, b.status_code)
                for r in (a, b):
                    assert r.headers["x-content-type-options"] == "nosniff", path
                    assert r.headers["x-frame-options"] == "DENY", path
                    assert r.headers["referrer-policy"] == "no-referrer", path
                    page = r.headers["content-type"].startswith("text/html")
                    csp = r.headers["content-security-policy"]
                    assert ("default-src 'self'" if page else "default-src 'none'") in csp, path
                    assert "frame-ancestors 'none'" in csp
                assert "strict-transport-security" not in a.headers
                assert b.headers["strict-transport-security"].startswith("max-age=31536000")
        with pytest.raises(httpx.ConnectError):  # a client that does not trust it says so
            httpx.get(f"{tls_url}/healthz", timeout=10)


DOB, EMAIL, PHONE = "1931-02-17", "zq.gateway@example.org", "+13125550177"


def test_patient_data_is_sealed_at_rest_and_erased_on_request(
    stack: tuple[str, Hexbook, FastAPI], base: str, api: httpx.Client, ops: httpx.Client
) -> None:
    _, hb, _ = stack
    needles = (DOB.encode(), EMAIL.encode(), PHONE.encode())
    start = slots(api, "clinic-2")[5]["start"]  # outside the room the test above opened
    hold = api.post("/v1/holds", json={
        "provider_id": "clinic-2", "service": "vaccine", "start": start,
        "attestation": {"birth_date": DOB, "postal_code": "60614"},
    })  # fmt: skip
    assert hold.status_code == 201, hold.text
    contact = {"email": EMAIL, "phone": PHONE, "language": "en"}
    confirm = {"hold_id": hold.json()["hold_id"],
               "patient": {"reference": "sealed-1", "contact": contact}}  # fmt: skip
    made = api.post("/v1/bookings", json=confirm, headers={"Idempotency-Key": "sealed-1"})
    assert made.status_code == 201, made.text
    bid, token = made.json()["booking_id"], {"X-Booking-Token": made.json()["booking_token"]}
    assert made.json()["patient"]["contact"] == contact
    assert api.get(f"/v1/bookings/{bid}", headers=token).json()["patient"]["contact"] == contact
    bad = {**confirm, "patient": {"reference": "x", "contact": {"email": "not-an-address"}}}
    assert api.post("/v1/bookings", json=bad).status_code == 422
    for shard in hb.directory.shards:  # the snapshots hold it too, not only the journal
        hb._call(shard, "write_snapshot")
    client = hb.redis
    blob = every_value(client)
    assert not [n for n in needles if n in blob]
    from actors.sealed_data import CLEAR, census

    counts = census(client)
    assert counts and CLEAR not in counts  # every journal entry and snapshot is sealed
    # Nor in the server's files (the append-only file, its log), the metrics or search.
    folder = Path(client.config_get("dir")["dir"])
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any("aof" in p.name for p in files)
    for p in files:
        assert not [n for n in needles if n in p.read_bytes()], p
    assert not [n for n in needles if n in ops.get("/metrics").content]
    found = api.get("/v1/search", params={"lat": 41.88, "lng": -87.63, "service": "vaccine"})
    assert found.status_code == 200 and not [n for n in needles if n in found.content]
    # An operator erases the patient's data: the booking stays, without it; the
    # trail has the erasure; a repeat erases nothing more.
    erased = ops.post("/v1/erasures", json={"patient_ref": "sealed-1"})
    assert erased.status_code == 200, erased.text
    assert erased.json() == {"patient_ref": "sealed-1", "bookings_erased": 1}
    after = api.get(f"/v1/bookings/{bid}", headers=token).json()
    assert after["status"] == "active" and after["patient"] == {"reference": "sealed-1"}
    assert ops.post("/v1/erasures", json={"patient_ref": "sealed-1"}).json()["bookings_erased"] == 0
    assert api.post("/v1/erasures", json={"patient_ref": "sealed-1"}).status_code == 403
    assert ops.post("/v1/erasures", json={"patient_ref": ""}).status_code == 422
    trail = ops.get("/v1/audit", params={"limit": 1000}).json()
    erasures = [e for e in trail if e["action"] == "patient.erase"]
    assert [(e["target"], e["outcome"]) for e in erasures] == [
        ("patient_ref=sealed-1", "ok"), ("patient_ref=sealed-1", "ok"), ("", "refused")
    ]  # fmt: skip
    # A repeat of the confirm under its key no longer shows the erased contact.
    again = api.post("/v1/bookings", json=confirm, headers={"Idempotency-Key": "sealed-1"})
    assert EMAIL not in again.text
