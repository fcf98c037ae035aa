"""A demo city: about 1,500 sites placed over Chicago's area, with a mix of services,
hours and capacities, reproducible from a seed."""

from __future__ import annotations

import random

from engine.provider import Provider
from engine.schedule import WeeklyTemplate, Window

__all__ = ["CHICAGO_BOUNDS", "demo_city"]

CHICAGO_BOUNDS = (41.645, 42.020, -87.940, -87.525)  # south, north, west, east
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")
# Denser near the Loop, as sites are: a few centres to cluster around.
CENTRES = [
    (41.881, -87.630),
    (41.950, -87.660),
    (41.790, -87.600),
    (41.975, -87.800),
    (41.750, -87.700),
    (41.880, -87.740),
    (41.700, -87.600),
]
HOURS = [("08:00", "16:00"), ("09:00", "17:00"), ("10:00", "18:00"), ("07:00", "19:00")]
LANGUAGES = ["en", "es", "pl", "zh", "ar", "tl"]


def demo_city(sites: int = 1500, seed: int = 2021) -> list[tuple[Provider, WeeklyTemplate]]:
    """``sites`` providers with their weekly templates, the same for the same seed."""
    rng = random.Random(seed)
    south, north, west, east = CHICAGO_BOUNDS
    city = []
    for i in range(sites):
        if rng.random() < 0.7:
            clat, clng = rng.choice(CENTRES)
            lat, lng = rng.gauss(clat, 0.03), rng.gauss(clng, 0.035)
        else:
            lat, lng = rng.uniform(south, north), rng.uniform(west, east)
        lat, lng = min(max(lat, south), north), min(max(lng, west), east)
        services = ["covid-vaccine"]
        if rng.random() < 0.5:
            services.append("flu-vaccine")
        if rng.random() < 0.2:
            services.append("pediatric-vaccine")
        opens, closes = rng.choice(HOURS)
        capacity = rng.choice([1, 1, 2, 2, 3, 4])
        weekend = rng.random() < 0.4
        window = (Window(opens, closes, capacity),)
        days = [(d, window) for d in WEEKDAYS]
        if weekend:
            days += [("sat", (Window("09:00", "13:00", capacity),))]
        languages = ["en", *rng.sample(LANGUAGES[1:], k=rng.choice([0, 0, 1, 2]))]
        provider = Provider(
            provider_id=f"chi-{i:04d}",
            name=f"{rng.choice(['Community', 'City', 'Neighborhood', 'Family'])} "
            f"{rng.choice(['Clinic', 'Pharmacy', 'Health Center', 'Vaccination Site'])} {i}",
            lat=round(lat, 5),
            lng=round(lng, 5),
            timezone="America/Chicago",
            services=tuple(services),
            languages=tuple(languages),
            accessibility=("wheelchair",) if rng.random() < 0.6 else (),
            insurance=tuple(rng.sample(["medicare", "medicaid", "bcbs", "aetna"], k=2)),
        )
        city.append((provider, WeeklyTemplate(days=tuple(days))))
    return city
