"""Load shapes of a launch, as Locust ``LoadTestShape`` classes.

Each reads its peak and duration from the environment (``HEXBOOK_LOAD_USERS``,
``HEXBOOK_LOAD_SECONDS``), which ``hexbook-load`` sets from its flags. They are marked
abstract here; the locustfile makes the chosen one concrete, so Locust sees exactly one.

- ``spike``: a launch. Ramp to the peak within a minute (a fifth of the run when that is
  shorter), hold it, then decay to a quarter of the peak by the end.
- ``steady``: the peak from the start (after the same ramp) to the end.
- ``step``: five equal steps up to the peak.
"""

from __future__ import annotations

import os

from locust import LoadTestShape

from loadtests.curves import users_at

__all__ = ["SHAPES", "LaunchSpike", "Steady", "Step", "users_at"]


def _env() -> tuple[int, float]:
    return int(os.environ.get("HEXBOOK_LOAD_USERS", "50")), float(
        os.environ.get("HEXBOOK_LOAD_SECONDS", "60")
    )


class _Shape(LoadTestShape):
    abstract = True
    name = "steady"

    def tick(self) -> tuple[int, float] | None:
        peak, seconds = _env()
        users = users_at(self.name, self.get_run_time(), peak, seconds)  # type: ignore[no-untyped-call]
        if users is None:
            return None
        return users, max(peak / min(60.0, seconds / 5), 1.0)


class LaunchSpike(_Shape):
    abstract = True
    name = "spike"


class Steady(_Shape):
    abstract = True
    name = "steady"


class Step(_Shape):
    abstract = True
    name = "step"


SHAPES: dict[str, type[_Shape]] = {"spike": LaunchSpike, "steady": Steady, "step": Step}
