"""Sizes: bytes (ints) inside, binary units for people (as `df -h` shows them), one parser."""

from __future__ import annotations

import re
from decimal import Decimal

from dlckpt.errors import UsageError

# Binary units, as `df -h`, `free -h` and `du -h` show them ("4.0G" is 4.0 GiB), so a
# figure here can be held against the user's own tools: a 4 GiB tmpfs is "4.0 GiB", not the
# "4.3 GB" that decimal units made of it. The IEC labels keep them apart from the decimal
# GB a user may type (parse_size reads both).
_BINARY = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def format_size(count: float) -> str:
    """The one formatter for sizes shown to people: `174.6 GiB`, `12.1 MiB`, `812 B`.

    count: bytes (int or float, may be negative for a difference). One decimal in the
    largest unit that is at most the figure, so a small checkpoint reads `4.8 KiB`, never
    `0.0000 GiB`; under 1 KiB, whole bytes, rounded as the JSON report rounds.
    """
    for unit, scale in _BINARY:
        if abs(count) >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{round(count)} B"


_UNITS = {
    "": 1, "b": 1,
    "k": 2**10, "kb": 10**3, "m": 2**20, "mb": 10**6,
    "g": 2**30, "gb": 10**9, "t": 2**40, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_size(text: str, name: str = "--fit-budget") -> int:
    """`15GB`, `15 GB`, `1.5TB`, `4G`, `500MiB` or a byte count -> bytes.

    GB, MB, KB, TB are decimal (10^9, as a user types a disk's billed size); GiB and the
    bare letters of `df -h` (`4.0G`, `512M`) are binary, so a figure copied from `df -h`
    means what it meant there.

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
            f"{name} {text!r}: expected a size such as 15GB, 4GiB, 500M, 1.5TB or a byte count"
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
