"""Everything a Redis holds, as bytes: what the at-rest tests search for patient data."""

from __future__ import annotations

from typing import Any


def every_value(client: Any) -> bytes:
    """Every key and value in Redis (strings, hashes, streams, sets, lists), as bytes."""
    out = []
    for key in client.scan_iter(count=500):
        kind = client.type(key).decode()
        out.append(key)
        if kind == "string":
            out.append(client.get(key) or b"")
        elif kind == "hash":
            out += [k + v for k, v in client.hgetall(key).items()]
        elif kind == "stream":
            out += [b"".join(k + v for k, v in f.items()) for _, f in client.xrange(key)]
        elif kind == "zset":
            out += client.zrange(key, 0, -1)
        elif kind == "list":
            out += client.lrange(key, 0, -1)
        elif kind == "set":
            out += list(client.smembers(key))
    return b"\n".join(out)
