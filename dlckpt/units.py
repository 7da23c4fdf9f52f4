"""Sizes: bytes (ints) inside, decimal units for people (as disks and GCS bill), one parser."""

from __future__ import annotations

import re
from decimal import Decimal

from dlckpt.errors import UsageError


def format_bytes(count: float) -> str:
    """Decimal units, as disks and GCS bill them: 187.5 GB, 12.7 MB, 812 B."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{round(count)} B"  # rounded as the JSON report rounds


def format_gb(count: float) -> str:
    """The headline unit: always GB, with enough digits to show a small figure."""
    gigabytes = count / 1e9
    return f"{gigabytes:.1f} GB" if gigabytes >= 1 else f"{gigabytes:.4f} GB"


def format_size(count: float) -> str:
    """GB from 1 GB up (the headline unit), else MB, KB or B: never "0.0000 GB"."""
    from dlckpt.units import format_bytes, format_gb

    return format_gb(count) if abs(count) >= 1e9 else format_bytes(count)


_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6,
    "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_size(text: str, name: str = "--fit-budget") -> int:
    """`15GB`, `15 GB`, `1.5TB`, `500MiB` or a byte count -> bytes (GB = 10^9, as disks bill).

    A comma is refused, not guessed: `1,5GB` is 1.5 GB in much of Europe and would read
    as 15 GB here. UsageError (one line) for anything else that is not a size above zero.
    """
    if "," in str(text):
        raise UsageError(
            f"{name} {text!r}: commas are ambiguous (1,5GB: 1.5 or 15?); "
            "write 1.5GB, 15GB or a byte count"
        )
    match = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise UsageError(
            f"{name} {text!r}: expected a size such as 15GB, 500MB, 1.5TB or a byte count"
        )
    number = match.group(1).replace("_", "")
    # Exact for integers of any size; a decimal is scaled in Decimal, not float, so a
    # huge size never rounds or overflows.
    whole, _, fraction = number.partition(".")
    scale = _UNITS[unit]
    value = int(whole) * scale + int(Decimal(f"0.{fraction or 0}") * scale)
    if value < 1:
        raise UsageError(f"{name} {text!r}: expected a size above zero, e.g. 15GB")
    return value
