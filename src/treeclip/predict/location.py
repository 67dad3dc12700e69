"""Where and when a photo was taken: `Location`, EXIF GPS/date reading, and location tables.

EXIF is read with Pillow (`Image.getexif` and its GPS IFD): latitude/longitude from ``GPSLatitude`` +
``GPSLatitudeRef`` (degrees, minutes, seconds as rationals), the date from ``DateTimeOriginal``, else
``DateTime``, else ``GPSDateStamp``. HEIC/HEIF photos are read when ``pillow-heif`` is installed
(``pip install 'treeclip[geo]'``). A photo without GPS, or with GPS values out of range, gives None: the
prediction then runs without a location prior.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import ExifTags, Image, UnidentifiedImageError

from treeclip.errors import UsageError
from treeclip.formats import PATH_ALIASES, Problem, open_table

log = logging.getLogger(__name__)

LAT_COLUMNS = ("decimalLatitude", "latitude", "lat", "coord_lat")
LON_COLUMNS = ("decimalLongitude", "longitude", "lon", "lng", "long", "coord_lon")
DATE_COLUMNS = ("eventDate", "date", "observed_on", "datetime")
MONTH_COLUMNS = ("month",)
_GPS = ExifTags.GPS
_EXIF_DATE_TAGS = (ExifTags.Base.DateTimeOriginal, ExifTags.Base.DateTimeDigitized)


@dataclass(frozen=True)
class Location:
    """A point (WGS 84 degrees) and optionally the month (1-12) a photo was taken; `source` says where it
    came from (``"--lat/--lon"``, ``"exif"``, a table's name)."""

    lat: float
    lon: float
    month: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lat) and -90.0 <= self.lat <= 90.0):
            raise ValueError(f"latitude must be within -90..90, got {self.lat}")
        if not (math.isfinite(self.lon) and -180.0 <= self.lon <= 180.0):
            raise ValueError(f"longitude must be within -180..180, got {self.lon}")
        if self.month is not None and not 1 <= self.month <= 12:
            raise ValueError(f"month must be within 1..12, got {self.month}")

    def describe(self) -> str:
        """``"51.5000,-0.1200"`` plus ``" month 6"`` when the month is known."""
        text = f"{self.lat:.4f},{self.lon:.4f}"
        return f"{text} month {self.month}" if self.month else text


def month_of(text: str) -> int | None:
    """The month of an ISO-8601 or EXIF date (``2019-06-30``, ``2019-06-30T10:00Z``, ``2019:06:30 10:00:00``,
    an ISO interval's start ``2019-06/2019-07``); None when there is none."""
    head = text.strip().split("/")[0].replace(":", "-", 2)
    parts = head[:10].split("-")
    if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit() and 1 <= int(parts[1]) <= 12:
        return int(parts[1])
    return None


def _degrees(value: object, ref: object) -> float | None:
    """Decimal degrees from an EXIF (degrees, minutes, seconds) triple and its N/S/E/W reference."""
    try:
        degrees, minutes, seconds = (float(part) for part in value)  # type: ignore[union-attr]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    decimal = degrees + minutes / 60.0 + seconds / 3600.0
    sign = -1.0 if str(ref).strip().upper()[:1] in ("S", "W") else 1.0
    return sign * decimal if math.isfinite(decimal) else None


def _exif_month(exif: Image.Exif, gps: Mapping[int, object]) -> int | None:
    details = exif.get_ifd(ExifTags.IFD.Exif)
    for text in (*(details.get(tag) for tag in _EXIF_DATE_TAGS), exif.get(ExifTags.Base.DateTime),
                 gps.get(_GPS.GPSDateStamp)):
        if isinstance(text, str) and (month := month_of(text)):
            return month
    return None


def _open(source: Path | bytes) -> Image.Image:
    def attempt() -> Image.Image:
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)

    try:
        return attempt()
    except UnidentifiedImageError:
        if not _register_heif():
            raise
        return attempt()


def _register_heif() -> bool:
    """Teach Pillow HEIC/HEIF when pillow-heif is installed; False when it is not."""
    try:
        import pillow_heif  # noqa: PLC0415 - optional
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def read_exif_location(path: str | os.PathLike[str] | bytes) -> Location | None:
    """The GPS position (and month) in a photo's EXIF (a file or its bytes), or None when it has none or
    cannot be read."""
    try:
        with _open(path if isinstance(path, bytes) else Path(path)) as image:
            exif = image.getexif()
            gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
            lat = _degrees(gps.get(_GPS.GPSLatitude), gps.get(_GPS.GPSLatitudeRef))
            lon = _degrees(gps.get(_GPS.GPSLongitude), gps.get(_GPS.GPSLongitudeRef))
            month = _exif_month(exif, gps)
    except (OSError, ValueError, SyntaxError) as exc:
        log.debug("%s: no readable EXIF (%s)", "upload" if isinstance(path, bytes) else path, exc)
        return None
    if lat is None or lon is None:
        return None
    try:
        return Location(lat, lon, month, source="exif")
    except ValueError as exc:
        log.warning("%s: ignoring EXIF GPS position: %s", "upload" if isinstance(path, bytes) else path, exc)
        return None


def parse_location(lat: float, lon: float, date: str | None = None, *, source: str) -> Location:
    """A `Location` from user values; UsageError naming `source` when they are out of range."""
    try:
        return Location(float(lat), float(lon), month_of(date) if date else None, source=source)
    except ValueError as exc:
        raise UsageError(f"{source}: {exc}") from exc


def read_location_table(path: str | os.PathLike[str]) -> dict[str, Location]:
    """Image path → Location from a CSV/TSV with a path column and latitude/longitude (and optionally a
    date or month) columns; paths are taken as written and also resolved against the table's folder.
    Rows with unusable coordinates are skipped and counted in a warning."""
    file = Path(path)
    table = open_table(file, what="location table")
    columns = {"path": table.find(*PATH_ALIASES), "lat": table.find(*LAT_COLUMNS),
               "lon": table.find(*LON_COLUMNS), "date": table.find(*DATE_COLUMNS)}
    if None in (columns["path"], columns["lat"], columns["lon"]):
        raise UsageError(f"{file}: a location table needs a path column ({PATH_ALIASES[0]}) and latitude/"
                         f"longitude columns ({LAT_COLUMNS[1]}, {LON_COLUMNS[1]}); its columns: "
                         f"{', '.join(table.header)}")
    locations: dict[str, Location] = {}
    skipped = 0
    for row in table.rows(columns):
        try:
            if isinstance(row, Problem):
                raise ValueError(row.reason)
            fields = row[1]
            location = Location(float(fields["lat"]), float(fields["lon"]), month_of(fields["date"]) or None,
                                source=file.name)
        except ValueError:
            skipped += 1
            continue
        locations[fields["path"]] = locations[str(file.parent / fields["path"])] = location
    if skipped:
        log.warning("%s: skipped %d rows without usable coordinates", file, skipped)
    return locations


Locator = Callable[[str], "Location | None"]
AUTO = "auto"


def make_locator(location: Location | Mapping[str, Location] | str | None) -> Locator | None:
    """A name → Location function: one Location for every image, a table keyed by path, ``"auto"`` (each
    photo's EXIF GPS), or None (no location)."""
    if location is None:
        return None
    if isinstance(location, Location):
        return lambda _name: location
    if location == AUTO:
        return lambda name: read_exif_location(name) if os.path.isfile(name) else None
    if isinstance(location, Mapping):
        return location.get
    raise UsageError(f"location must be a Location, a table of them or {AUTO!r}, got {location!r}")
