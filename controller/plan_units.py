"""The one place where plan quantities with units are parsed.

A duration is a number of seconds or a string with a unit ("250us", "200ms", "30s", "5m",
"24h", "1h30m"); a percent is a number of percent or a string ending in "%"; a size is a
number of bytes or a string with a binary or decimal unit ("80GB", "512MiB").  Every parser
returns the canonical form (float seconds, float percent, int bytes) or raises ValueError
with a message fit for a PlanIssue.
"""
import math
import re

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|min|s|m|h|d)")
DURATION_PATTERN = r"^\s*((\d+(\.\d+)?)\s*(ns|us|µs|ms|min|s|m|h|d)\s*)+$"
PERCENT_PATTERN = r"^\s*\d+(\.\d+)?\s*%\s*$"
SIZE_PATTERN = r"^\s*\d+(\.\d+)?\s*([kKMGTP]i?B?|B)?\s*$"

_SIZE_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "KIB": 2**10, "KI": 2**10,
               "M": 10**6, "MB": 10**6, "MIB": 2**20, "MI": 2**20,
               "G": 10**9, "GB": 10**9, "GIB": 2**30, "GI": 2**30,
               "T": 10**12, "TB": 10**12, "TIB": 2**40, "TI": 2**40,
               "P": 10**15, "PB": 10**15, "PIB": 2**50, "PI": 2**50}


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_duration(value):
    """Seconds (float >= 0) from a number of seconds or a string such as "200ms" or "1h30m"."""
    if _is_number(value):
        seconds = float(value)
    elif isinstance(value, str) and re.match(DURATION_PATTERN, value):
        seconds = sum(float(number) * _DURATION_UNITS[unit]
                      for number, unit in _DURATION_PART.findall(value))
    else:
        raise ValueError(f"expected a duration such as 200ms, 30s, 5m or 24h, got {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number, got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


def parse_percent(value):
    """Percent (float, 5.0 meaning 5 %) from a number of percent or a string such as "5%"."""
    if _is_number(value):
        percent = float(value)
    elif isinstance(value, str) and re.match(PERCENT_PATTERN, value):
        percent = float(value.strip().rstrip("%").strip())
    else:
        raise ValueError(f"expected a percent such as 5% or 99.9, got {value!r}")
    if not math.isfinite(percent):
        raise ValueError(f"a percent must be a finite number, got {value!r}")
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"a percent must lie in 0..100, got {value!r}")
    return percent


def parse_size(value):
    """Bytes (int >= 0) from a number of bytes or a string such as "80GB" or "512MiB"."""
    if _is_number(value):
        size = float(value)
    elif isinstance(value, str) and re.match(SIZE_PATTERN, value):
        number, unit = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(\S*)\s*$", value).groups()
        size = float(number) * _SIZE_UNITS[unit.upper()]
    else:
        raise ValueError(f"expected a size such as 80GB or 512MiB, got {value!r}")
    if not math.isfinite(size) or size < 0:
        raise ValueError(f"a size cannot be negative, got {value!r}")
    return int(size)


def parse_percentile_key(key):
    """The percentile named by a key such as "p95" or "p99.9" (float in (0, 100))."""
    match = re.match(r"^p(\d+(?:\.\d+)?)$", str(key))
    if not match:
        raise ValueError(f"expected a percentile key such as p95 or p99.9, got {key!r}")
    percentile = float(match.group(1))
    if not 0.0 < percentile < 100.0:
        raise ValueError(f"percentile {key} is impossible: it must lie strictly between p0 "
                         f"and p100")
    return percentile


def percentile_key(percentile):
    """The key for a percentile, the inverse of parse_percentile_key ("p99.9", "p95")."""
    return "p" + format(percentile, "g")


def format_duration(seconds):
    """A short human form of a duration in seconds ("200ms", "24h", "90s")."""
    if seconds is None:
        return "-"
    if seconds == 0:
        return "0s"
    for unit, scale in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return format(round(seconds / scale, 3), "g") + unit
    return format(round(seconds / 1e-9, 3), "g") + "ns"


def format_percent(percent):
    return "-" if percent is None else format(round(percent, 4), "g") + "%"
