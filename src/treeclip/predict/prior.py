"""The location prior: how likely each taxon of a bank is at a place (and season), from occurrence records.

**Building** (`build_prior`): every usable occurrence (latitude, longitude, optional date, a taxon) is counted
in its cell of H3's global grid of near-equal-area hexagons (``resolution`` 3 by default: cells of about
12,400 km², 60 km edge), once at each of species, genus and family that the record names, all year and (with
``by_season``) in its season (Dec-Feb, Mar-May, Jun-Aug, Sep-Nov; the grid is local, so hemispheres need no
special case). Records without usable coordinates or taxon are counted and reported, never silently dropped.

**Querying** (`LocationPrior.factors`): for a location, the counts of its cell and of the ring of neighbouring
cells (``grid_disk`` distance 1, each neighbour weighted `NEIGHBOUR_WEIGHT`) give a density ``d`` per taxon;
with a month and a seasonal prior, records of that season count twice. A bank column (species) then gets

    g = max( d_species / (d_species + 1),
             GENUS_SHARE  * d_genus  / (d_genus  + 1),     # a species never seen here borrows from its genus
             FAMILY_SHARE * d_family / (d_family + 1),     # ... and its family
             floor )                                        # nothing near (or no record anywhere)

so one record of the species itself near the photo gives at least 1/3 (a neighbour cell's record), more than
any borrowed value (< `GENUS_SHARE`): a species recorded near the photo always outranks, by prior, every
species that is not. Taxa are matched by name at each rank (species as "Genus epithet"), case-insensitively.

**Applying** (`apply_prior`): ``p'(taxon) ∝ p(taxon | image) * ((1 - weight) + weight * g)``, renormalised
once over the bank (with any checklist or clade filter). ``weight`` (default 1) is the mixing weight: 0
ignores the prior, 1 uses it fully; the floor keeps every taxon possible.

Storage: one Parquet file (``rank, name, cell, season, count`` rows; the settings and build counts as JSON in
the file's metadata under ``treeclip_prior``).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from treeclip.atomic import atomic_path
from treeclip.errors import UsageError
from treeclip.formats import TAXON_ROLES, Problem, has_ranks, open_table, resolve, taxon_of
from treeclip.taxonomy import Rank, Taxon, parse_label

from .location import DATE_COLUMNS, LAT_COLUMNS, LON_COLUMNS, MONTH_COLUMNS, Location, month_of

log = logging.getLogger(__name__)

PRIOR_RANKS = (Rank.SPECIES, Rank.GENUS, Rank.FAMILY)
RANK_LABELS = {Rank.SPECIES: "species", Rank.GENUS: "genus", Rank.FAMILY: "family"}
NEIGHBOUR_WEIGHT = 0.5
GENUS_SHARE, FAMILY_SHARE = 0.3, 0.1
DEFAULT_FLOOR, DEFAULT_RESOLUTION, DEFAULT_WEIGHT = 0.02, 3, 1.0
ALL_YEAR = 0
METADATA_KEY = b"treeclip_prior"
FORMAT = "treeclip-prior"
NAME_COLUMNS = ("taxon", "name", "verbatimScientificName")


def season_of(month: int) -> int:
    """1 = Dec-Feb, 2 = Mar-May, 3 = Jun-Aug, 4 = Sep-Nov."""
    return (month % 12) // 3 + 1


def taxon_key(lineage: Sequence[str], rank: Rank) -> str:
    """The name a taxon is matched by at `rank` ("genus epithet" at species), casefolded; "" if unnamed."""
    if rank == Rank.SPECIES:
        return f"{lineage[Rank.GENUS]} {lineage[Rank.SPECIES]}".casefold() if lineage[Rank.SPECIES] else ""
    return lineage[rank].casefold()


@dataclass(frozen=True)
class Occurrence:
    """One usable record: a point, its month (or None) and the taxon it names."""

    lat: float
    lon: float
    month: int | None
    taxon: Taxon


class OccurrenceReader:
    """Usable records of a GBIF/Darwin Core occurrence table (CSV, TSV or Parquet) or a plain
    ``lat, lon, taxon`` CSV.

    Coordinates: ``decimalLatitude``/``decimalLongitude`` (also ``latitude``/``lat``, ``longitude``/``lon``).
    Taxon: the rank columns (``kingdom`` ... ``genus``, ``species`` as epithet or binomial) and/or a full name
    (``scientificName``), read by `treeclip.formats.taxon_of`; or else one ``taxon``/``name`` column read by
    `treeclip.taxonomy.parse_label` (a binomial, or a single name placed by its suffix). Date: ``eventDate``
    (ISO 8601; an interval's start) or ``month``. Skipped, and counted by reason in `skipped`: rows that do not
    parse, ``occurrenceStatus`` absent, missing or out-of-range coordinates, 0,0 ("null island", a common
    data-entry error), and rows without a usable taxon.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.table = open_table(path, what="occurrence table")
        self.columns = self._columns()
        self.skipped: Counter = Counter()

    def _columns(self) -> dict[str, str | None]:
        table = self.table
        roles = resolve(table.header, TAXON_ROLES, where=str(table.path))
        roles.pop("common", None)
        columns = {"lat": table.find(*LAT_COLUMNS), "lon": table.find(*LON_COLUMNS),
                   "name": None if has_ranks(roles) else table.find(*NAME_COLUMNS)}
        if None in (columns["lat"], columns["lon"]) or not (has_ranks(roles) or columns["name"]):
            raise UsageError(f"{table.path}: an occurrence table needs latitude/longitude columns (decimalLatitude, "
                             "decimalLongitude) and taxon columns (kingdom ... species, scientificName or taxon); "
                             f"its columns: {', '.join(table.header[:12])}")
        return {**columns, **roles, "date": table.find(*DATE_COLUMNS), "month": table.find(*MONTH_COLUMNS),
                "status": table.find("occurrenceStatus")}

    def __iter__(self) -> Iterator[Occurrence]:
        for row in self.table.rows(self.columns):
            record = row.reason if isinstance(row, Problem) else self._record(self.table.where(row[0]), row[1])
            if isinstance(record, str):
                self.skipped[record] += 1
            else:
                yield record

    @staticmethod
    def _record(where: str, fields: dict[str, str]) -> Occurrence | str:
        """An Occurrence, or the reason the row is skipped."""
        if fields["status"].casefold() == "absent":
            return "occurrenceStatus absent"
        try:
            location = Location(float(fields["lat"]), float(fields["lon"]))
        except ValueError:
            return "missing or out-of-range coordinates"
        if location.lat == 0.0 and location.lon == 0.0:
            return "coordinates 0,0"
        if fields["name"]:  # a plain table's one name: a binomial, or a single name placed by its suffix
            taxon = parse_label(fields["name"])
        else:
            taxon = taxon_of({role: fields[role] for role in TAXON_ROLES if role in fields}, where)
        if not isinstance(taxon, Taxon) or taxon.depth == 0:
            return "no usable taxon"
        month = month_of(fields["date"]) if fields["date"] else None
        if month is None and fields["month"].isdigit() and 1 <= int(fields["month"]) <= 12:
            month = int(fields["month"])
        return Occurrence(location.lat, location.lon, month, taxon)


@dataclass
class PriorInfo:
    """Settings and build counts, stored with the prior."""

    resolution: int = DEFAULT_RESOLUTION
    by_season: bool = False
    records: int = 0
    cells: int = 0
    taxa: dict[str, int] = field(default_factory=dict)  # distinct names per rank
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> records
    sources: list[str] = field(default_factory=list)


class LocationPrior:
    """Occurrence counts per (season, cell, rank, name); see the module docstring."""

    def __init__(self, counts: dict[tuple[int, int], Counter], info: PriorInfo, name: str = "") -> None:
        self.counts, self.info, self.name = counts, info, name  # (season, cell) -> Counter[(rank, key)]

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, occurrences: Iterable[Occurrence], *, resolution: int = DEFAULT_RESOLUTION,
              by_season: bool = False, skipped: dict[str, int] | None = None,
              sources: Sequence[str] = ()) -> LocationPrior:
        """Count `occurrences` per cell (and season); `skipped` are the reader's dropped-record counts."""
        if not 0 <= resolution <= 15:
            raise UsageError(f"--resolution must be an H3 resolution 0..15, got {resolution}")
        counts: dict[tuple[int, int], Counter] = defaultdict(Counter)
        names: dict[Rank, set[str]] = {rank: set() for rank in PRIOR_RANKS}
        records = 0
        for record in occurrences:
            cell = h3.str_to_int(h3.latlng_to_cell(record.lat, record.lon, resolution))
            keys = [(rank, taxon_key(record.taxon.lineage, rank)) for rank in PRIOR_RANKS]
            keys = [(int(rank), key) for rank, key in keys if key]
            seasons = [ALL_YEAR] + ([season_of(record.month)] if by_season and record.month else [])
            for season in seasons:
                counts[(season, cell)].update(keys)
            for rank, key in keys:
                names[Rank(rank)].add(key)
            records += 1
        info = PriorInfo(resolution=resolution, by_season=by_season, records=records,
                         cells=sum(season == ALL_YEAR for season, _ in counts),
                         taxa={RANK_LABELS[rank]: len(keys) for rank, keys in names.items()},
                         skipped=dict(skipped or {}), sources=list(sources))
        return cls(dict(counts), info)

    # ------------------------------------------------------------------ storage
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the prior as one Parquet file (atomically)."""
        rows = [(RANK_LABELS[Rank(rank)], key, cell, season, count)
                for (season, cell), counter in sorted(self.counts.items())
                for (rank, key), count in sorted(counter.items())]
        ranks, keys, cells, seasons, values = (list(column) for column in zip(*rows)) if rows else ([],) * 5
        table = pa.table({"rank": pa.array(ranks, pa.string()), "name": pa.array(keys, pa.string()),
                          "cell": pa.array(cells, pa.int64()), "season": pa.array(seasons, pa.int8()),
                          "count": pa.array(values, pa.int64())})
        document = {"format": FORMAT, "version": 1, **asdict(self.info)}
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(document).encode()})
        out = Path(path)
        with atomic_path(out) as tmp:
            pq.write_table(table, tmp)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LocationPrior:
        """Read a prior written by `save`; UsageError for a missing file or another kind of file."""
        file = Path(path)
        if not file.is_file():
            raise UsageError(f"prior not found: {path} (make one with `treeclip prior build`)")
        try:
            table = pq.read_table(file)
            document = json.loads((table.schema.metadata or {}).get(METADATA_KEY, b"{}"))
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise UsageError(f"{file}: not a readable prior ({exc})") from exc
        if document.get("format") != FORMAT:
            raise UsageError(f"{file}: not a treeclip prior (make one with `treeclip prior build`)")
        labels = {label: int(rank) for rank, label in RANK_LABELS.items()}
        counts: dict[tuple[int, int], Counter] = defaultdict(Counter)
        columns = [table.column(name).to_pylist() for name in ("rank", "name", "cell", "season", "count")]
        for rank, key, cell, season, count in zip(*columns, strict=True):
            counts[(season, cell)][(labels[rank], key)] = count
        fields = {name: document[name] for name in PriorInfo.__dataclass_fields__ if name in document}
        return cls(dict(counts), PriorInfo(**fields), name=file.name)

    # ------------------------------------------------------------------ querying
    def densities(self, location: Location) -> Counter:
        """(rank, name) -> neighbour-weighted record count around `location` (season counted twice)."""
        origin = h3.latlng_to_cell(location.lat, location.lon, self.info.resolution)
        seasons = [ALL_YEAR]
        if self.info.by_season and location.month:
            seasons.append(season_of(location.month))
        density: Counter = Counter()
        for cell in h3.grid_disk(origin, 1):
            weight = 1.0 if cell == origin else NEIGHBOUR_WEIGHT
            for season in seasons:
                for key, count in self.counts.get((season, h3.str_to_int(cell)), {}).items():
                    density[key] += weight * count
        return density

    def bind(self, lineages: Sequence[Sequence[str]], *, floor: float = DEFAULT_FLOOR) -> BoundPrior:
        """This prior matched to a bank's columns (see `BoundPrior`)."""
        return BoundPrior(self, lineages, floor=floor)


class BoundPrior:
    """A prior matched to the columns of one bank: per-location factor vectors ``g`` (cached per cell)."""

    def __init__(self, prior: LocationPrior, lineages: Sequence[Sequence[str]], *, floor: float) -> None:
        if not 0 < floor <= 1:
            raise UsageError(f"prior floor must be in (0, 1], got {floor}")
        self.prior, self.floor, self.n_taxa = prior, floor, len(lineages)
        self.columns: dict[tuple[int, str], np.ndarray] = {}
        grouped: dict[tuple[int, str], list[int]] = defaultdict(list)
        for column, lineage in enumerate(lineages):
            for rank in PRIOR_RANKS:
                key = taxon_key(lineage, rank)
                if key:
                    grouped[(int(rank), key)].append(column)
        self.columns = {key: np.asarray(columns, dtype=np.int64) for key, columns in grouped.items()}
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def factors(self, location: Location) -> np.ndarray:
        """``g`` for every bank column at `location` (float32, in [floor, 1))."""
        season = season_of(location.month) if self.prior.info.by_season and location.month else ALL_YEAR
        key = (h3.latlng_to_cell(location.lat, location.lon, self.prior.info.resolution), season)
        if key not in self._cache:
            self._cache[key] = self._factors(self.prior.densities(location))
        return self._cache[key]

    def _factors(self, density: Counter) -> np.ndarray:
        share = {int(Rank.SPECIES): 1.0, int(Rank.GENUS): GENUS_SHARE, int(Rank.FAMILY): FAMILY_SHARE}
        g = np.full(self.n_taxa, self.floor, dtype=np.float32)
        for (rank, name), value in density.items():
            columns = self.columns.get((rank, name))
            if columns is not None:
                np.maximum.at(g, columns, np.float32(share[rank] * value / (value + 1.0)))
        return g


def apply_prior(probs: np.ndarray, factors: np.ndarray, *, weight: float = DEFAULT_WEIGHT) -> np.ndarray:
    """``probs * ((1 - weight) + weight * factors)`` renormalised per row (``[B, n]`` and ``[B, n]``/``[n]``)."""
    if not 0 <= weight <= 1:
        raise UsageError(f"prior weight must be in [0, 1], got {weight}")
    scaled = probs * ((1.0 - weight) + weight * factors)
    return scaled / scaled.sum(axis=-1, keepdims=True)
