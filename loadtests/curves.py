"""The user curves of the load shapes, as pure functions (no Locust import: importing
Locust monkey-patches the process with gevent, which only a Locust process should do)."""

from __future__ import annotations

__all__ = ["users_at"]


def users_at(shape: str, t: float, peak: int, seconds: float) -> int | None:
    """Users the shape wants ``t`` seconds in (``None``: the run is over). Pure, so the
    shapes can be tested (and plotted) without running Locust."""
    if t >= seconds:
        return None
    ramp = min(60.0, seconds / 5)
    if shape == "step":
        return max(1, round(peak * (int(t // (seconds / 5)) + 1) / 5))
    if t < ramp:
        return max(1, round(peak * t / ramp))
    if shape == "steady":
        return peak
    hold_until = ramp + (seconds - ramp) * 0.4
    if t < hold_until:
        return peak
    frac = (t - hold_until) / max(seconds - hold_until, 1e-9)
    return max(1, round(peak * (1 - 0.75 * frac)))
