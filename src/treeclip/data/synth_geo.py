"""Geography of the miniature tree of life: a range per species, a place and date per image, occurrence records.

Ranges are inherited like traits: each kingdom gets a random home on the globe, and every taxon's range centre
is its parent's moved a random distance (scale `RANK_SPREAD_KM`, shrinking with rank) in a random direction,
so relatives live near each other and sister species overlap partly, distant clades rarely. A species' range
is a disc of radius ~`RANGE_KM` (log-normal jitter) around its centre; image locations and occurrence records
are drawn uniformly inside it, dates uniformly over `YEARS`. Everything comes from generators seeded by
``(seed, stream, species)``, so a world's geography is as deterministic as its images.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

import numpy as np

EARTH_RADIUS_KM = 6371.0
RANK_SPREAD_KM = (0.0, 5000.0, 3500.0, 2000.0, 1000.0, 500.0, 250.0)  # centre moves at kingdom ... species
RANGE_KM = 250.0
YEARS = (2015, 2024)
OCCURRENCE_COLUMNS = ("occurrenceID", "kingdom", "phylum", "class", "order", "family", "genus", "specificEpithet",
                      "scientificName", "decimalLatitude", "decimalLongitude", "eventDate", "basisOfRecord")
LOCATION_COLUMNS = ("decimalLatitude", "decimalLongitude", "eventDate")


def destination(lat: np.ndarray, lon: np.ndarray, bearing: np.ndarray, km: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Great-circle destination (degrees) from points, bearings (radians) and distances (km)."""
    phi, lam, delta = np.radians(lat), np.radians(lon), np.asarray(km) / EARTH_RADIUS_KM
    phi2 = np.arcsin(np.sin(phi) * np.cos(delta) + np.cos(phi) * np.sin(delta) * np.cos(bearing))
    lam2 = lam + np.arctan2(np.sin(bearing) * np.sin(delta) * np.cos(phi), np.cos(delta) - np.sin(phi) * np.sin(phi2))
    return np.degrees(phi2), (np.degrees(lam2) + 540.0) % 360.0 - 180.0


def range_centres(paths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[n_species, 2]`` (lat, lon) range centres from the species' node indices per rank (``[n, 7]``)."""
    n_kingdoms = int(paths[:, 0].max()) + 1
    centres = np.column_stack([np.degrees(np.arcsin(rng.uniform(-0.8, 0.9, n_kingdoms))),
                               rng.uniform(-180.0, 180.0, n_kingdoms)])
    for rank in range(1, paths.shape[1]):
        parent_of = {}
        for node, parent in zip(paths[:, rank].tolist(), paths[:, rank - 1].tolist(), strict=True):
            parent_of.setdefault(node, parent)
        nodes = np.array(sorted(parent_of))
        parents = np.array([parent_of[node] for node in nodes])
        km = RANK_SPREAD_KM[rank] * np.sqrt(rng.uniform(0.0, 1.0, len(nodes)))
        lat, lon = destination(centres[parents, 0], centres[parents, 1], rng.uniform(0, 2 * np.pi, len(nodes)), km)
        level = np.zeros((int(nodes.max()) + 1, 2))
        level[nodes] = np.column_stack([lat, lon])
        centres = level
    return centres[paths[:, -1]]


def range_radii(n_species: int, rng: np.random.Generator) -> np.ndarray:
    """Range radius (km) per species: `RANGE_KM` with log-normal jitter."""
    return RANGE_KM * np.exp(rng.normal(0.0, 0.35, n_species))


def points_in_range(centre: Sequence[float], radius: float, n: int, rng: np.random.Generator
                    ) -> list[tuple[float, float, str]]:
    """`n` (lat, lon, ISO date) drawn uniformly inside a range disc and over `YEARS`."""
    km = radius * np.sqrt(rng.uniform(0.0, 1.0, n))
    lat, lon = destination(np.full(n, centre[0]), np.full(n, centre[1]), rng.uniform(0, 2 * np.pi, n), km)
    start, end = dt.date(YEARS[0], 1, 1).toordinal(), dt.date(YEARS[1], 12, 31).toordinal()
    days = rng.integers(start, end + 1, n)
    return [(round(float(a), 5), round(float(b), 5), dt.date.fromordinal(int(d)).isoformat())
            for a, b, d in zip(lat, lon, days, strict=True)]


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))
