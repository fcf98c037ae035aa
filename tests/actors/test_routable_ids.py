from __future__ import annotations

import base64
import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.api import calendar_of, new_secret, routable_id
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


def test_secrets_are_128_random_bits_never_repeated_across_refills_or_a_fork() -> None:
    """Ids come from a pool of os.urandom bytes: 22 base64url characters (16 bytes)
    each, none repeated over several refills of the pool, and a forked child does not
    hand out the bytes its parent had left in the pool."""
    ids = [new_secret() for _ in range(3000)]  # about 12 refills of 4 KiB
    assert len(set(ids)) == len(ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, " ".join(new_secret() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = f.read().split()
    os.waitpid(pid, 0)
    parent = [new_secret() for _ in range(8)]
    assert len(child) == 8 and not set(child) & set(parent)
