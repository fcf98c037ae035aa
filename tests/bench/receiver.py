"""A webhook receiver in a process of its own (so it takes no time from the gateway it
measures): checks each call's signature, prints ``ARRIVED <kind> <entry_id> <unix time>``
per delivery, first the ``LISTENING <url>`` line.

    python tests/bench/receiver.py SECRET
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.sinks import Sink, webhook_receiver


class _Printing(Sink):
    def take(self, key: str, item: object) -> bool:
        fresh = super().take(key, item)
        if fresh and isinstance(item, dict):
            print(f"ARRIVED {item['kind']} {item['entry_id']} {time.time():.6f}", flush=True)
        return fresh


def main() -> None:
    sink = _Printing()
    with webhook_receiver(sink, sys.argv[1].encode()) as url:
        print(f"LISTENING {url}", flush=True)
        sys.stdin.read()  # until the parent closes it


if __name__ == "__main__":
    main()
