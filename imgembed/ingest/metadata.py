"""What a photo's file says about it: capture time, camera make and model, GPS position.

Read from EXIF (JPEG, HEIC, AVIF, PNG, WebP and TIFF all carry it) by :func:`photo_meta` on an
opened Pillow image, before any pixel is decoded. Metadata is best effort: a photo whose EXIF is
missing, broken or absurd gets empty fields, never an error. The capture time is the camera's
local time as written (EXIF has no time zone until ``OffsetTimeOriginal``, which few files carry),
as an ISO-8601 string ``YYYY-MM-DDTHH:MM:SS`` that sorts and compares as text.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import NamedTuple

from PIL import Image

# EXIF tags (https://exiftool.org/TagNames/EXIF.html)
_MAKE, _MODEL, _DATETIME = 0x010F, 0x0110, 0x0132
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATETIME_ORIGINAL, _DATETIME_DIGITIZED = 0x9003, 0x9004
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4

# Capture times outside these years are taken for garbage (a camera whose clock was never set
# writes 0000:00:00, some write 1970 or 2099 placeholders; the first photograph is from 1826).
_YEARS = (1826, 2200)
_TEXT_MAX = 100  # make and model are short; a longer one is cut


class PhotoMeta(NamedTuple):
    taken: str | None = None  # capture time from EXIF, "YYYY-MM-DDTHH:MM:SS" (camera's local time)
    make: str | None = None  # camera maker, e.g. "Apple"
    model: str | None = None  # camera model, e.g. "iPhone 15 Pro"
    lat: float | None = None  # GPS position in degrees (south and west negative)
    lon: float | None = None


def photo_meta(im: Image.Image) -> PhotoMeta:
    """The metadata of an opened (not necessarily loaded) image. Never raises."""
    try:
        exif = im.getexif()
    except Exception:  # broken EXIF in a decodable photo: no metadata, not a skip
        return PhotoMeta()
    try:
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:
        sub = {}
    taken = None
    for value in (sub.get(_DATETIME_ORIGINAL), sub.get(_DATETIME_DIGITIZED), exif.get(_DATETIME)):
        taken = parse_exif_time(value)
        if taken:
            break
    lat, lon = _gps(exif)
    return PhotoMeta(taken, _text(exif.get(_MAKE)), _text(exif.get(_MODEL)), lat, lon)


def parse_exif_time(value) -> str | None:
    """``"2023:06:01 14:03:22"`` -> ``"2023-06-01T14:03:22"``; None for anything else."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    value = value.strip("\x00 ").strip()
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M", "%Y:%m:%d"):
        try:
            t = datetime.strptime(value[:19], fmt)
        except ValueError:
            continue
        return t.isoformat(timespec="seconds") if _YEARS[0] <= t.year <= _YEARS[1] else None
    return None


def local_time(mtime_ns: int) -> str:
    """A file's modification time as local ``YYYY-MM-DDTHH:MM:SS`` (the fallback capture time)."""
    return datetime.fromtimestamp(mtime_ns / 1e9).isoformat(timespec="seconds")


def _text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = " ".join(value.replace("\x00", " ").split())
    return value[:_TEXT_MAX] or None


def _gps(exif: Image.Exif) -> tuple[float | None, float | None]:
    try:
        gps = exif.get_ifd(_GPS_IFD)
        lat = _degrees(gps.get(_GPS_LAT), gps.get(_GPS_LAT_REF), "S", 90)
        lon = _degrees(gps.get(_GPS_LON), gps.get(_GPS_LON_REF), "W", 180)
    except Exception:
        return None, None
    return (lat, lon) if lat is not None and lon is not None else (None, None)


def _degrees(dms, ref, negative: str, limit: float) -> float | None:
    """EXIF (degrees, minutes, seconds) rationals -> signed decimal degrees within +-limit."""
    if not isinstance(dms, tuple) or not 1 <= len(dms) <= 3:
        return None
    value = 0.0
    for part, scale in zip(dms, (1, 60, 3600)):
        x = float(part)
        if not math.isfinite(x) or x < 0:
            return None
        value += x / scale
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    if isinstance(ref, str) and ref.strip("\x00 ").upper() == negative:
        value = -value
    return round(value, 7) if abs(value) <= limit else None


def with_fallback(meta: PhotoMeta, mtime_ns: int) -> tuple:
    """``(taken, taken_from, make, model, lat, lon)`` as the index records them: the EXIF capture
    time, or the file's modification time when the file has none (``taken_from`` says which)."""
    taken, source = (meta.taken, "exif") if meta.taken else (local_time(mtime_ns), "mtime")
    return taken, source, meta.make, meta.model, meta.lat, meta.lon
