"""The words of the notifications and the webhook's signature, without a stack."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from engine.notices import KINDS, Notice
from engine.records import Contact
from gateway.deliver import Templates, message_id, signature, verify

ZONE = "America/Chicago"
WINTER = int(datetime(2026, 12, 8, 9, 0, tzinfo=ZoneInfo(ZONE)).timestamp())
SUMMER = int(datetime(2027, 7, 6, 14, 30, tzinfo=ZoneInfo(ZONE)).timestamp())


def notice(kind: str, language: str, start: int = WINTER) -> Notice:
    return Notice(
        f"{kind}:x", kind, 0, Contact("p@example.org", None, language), "ref", "p1",  # type: ignore[arg-type]
        "covid-vaccine", start, "Clinic Pilsen", ZONE, booking_id="bk-1", hold_id="h-1",
        old_start=start - 86_400, expires_at=start - 3_600,
    )  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("language", ["en", "es"])
def test_every_kind_is_written_in_both_languages_with_the_sites_local_time(
    kind: str, language: str
) -> None:
    m = Templates().render(notice(kind, language))
    assert m.subject and "Clinic Pilsen" in m.subject
    assert "covid-vaccine" in m.text and "America/Chicago" in m.text
    if language == "en":
        assert "Tuesday, December 8, 2026" in m.text and "9:00:00" in m.text
        assert "Central Standard Time" in m.text
    else:
        assert "martes, 8 de diciembre de 2026" in m.text and "9:00:00" in m.text
        assert "hora estándar central" in m.text


def test_summer_time_is_shown_as_the_site_keeps_it() -> None:
    m = Templates().render(notice("booking.reminder", "en", SUMMER))
    assert "Tuesday, July 6, 2027" in m.text and "2:30:00" in m.text
    assert "Central Daylight Time" in m.text
    assert "mañana" in Templates().render(notice("booking.reminder", "es", SUMMER)).subject


def test_an_unknown_language_falls_back_to_english() -> None:
    assert "booked" in Templates().render(notice("booking.confirmed", "fr")).subject


def test_the_webhook_signature_is_checked_for_body_secret_and_age() -> None:
    body, secret, now = b'{"delivery":"x"}', b"s3cret", 1_800_000_000
    headers = {
        "x-hexbook-timestamp": str(now),
        "x-hexbook-signature": signature(secret, str(now), body),
    }
    assert verify(secret, headers, body, now)
    assert not verify(secret, headers, body + b" ", now)  # the body changed
    assert not verify(b"other", headers, body, now)  # another secret
    assert not verify(secret, headers, body, now + 301)  # replayed too late
    assert not verify(secret, {**headers, "x-hexbook-timestamp": "soon"}, body, now)
    assert not verify(secret, {}, body, now)


def test_a_message_id_is_one_per_notice_and_a_valid_header() -> None:
    a, b = message_id("booking.confirmed:abc"), message_id("booking.cancelled:abc")
    assert a != b and a == message_id("booking.confirmed:abc")
    assert a.startswith("<") and a.endswith("@hexbook>") and ":" not in a


def test_hexbook_up_says_how_notifications_go_without_printing_a_password() -> None:
    from gateway.cli import _channels
    from gateway.settings import Settings

    none = _channels(Settings())
    assert none.startswith("none sent") and "HEXBOOK_SMTP_URL" in none
    mail = _channels(Settings(smtp_url="smtp+starttls://hexbook:s3cr%40t@mail.example.org:587"))
    assert mail == "e-mail via smtp+starttls://hexbook:***@mail.example.org:587"
    both = _channels(
        Settings(smtp_url="smtp://m:25", webhook_url="https://sms.example.org/h", notify=False)
    )
    assert both == (
        "e-mail via smtp://m:25 and signed webhook to https://sms.example.org/h "
        "(by `hexbook deliver`)"
    )
