from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.api import calendar_of, routable_id
from engine.errors import InvalidRequest

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,40}", fullmatch=True)


@given(names, names)
def test_ids_route_back_to_their_calendar(provider_id: str, service: str) -> None:
    rid = routable_id(provider_id, service)
    assert calendar_of(rid) == (provider_id, service)
    assert len(rid.rsplit(".", 1)[1]) >= 22  # 128 random bits, base64url


def test_ids_are_unique() -> None:
    assert len({routable_id("p", "s") for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    "bad", ["", "nodot", "cA.short", "!!!.AAAAAAAAAAAAAAAAAAAAAAAA", "cA.AAAAAAAAAAAAAAAAAAAAAAAA"]
)
def test_foreign_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRequest, match="not issued by hexbook"):
        calendar_of(bad)
