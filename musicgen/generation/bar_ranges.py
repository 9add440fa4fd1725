"""Bar ranges a musician names (``infill=9-12,25-28``): parsing and checking, each mistake one line.

Bars are numbered from 1 as a score or a DAW numbers them, both ends included, so ``9-12`` is four bars. Ranges
may come in any order; they are sorted, and ranges that overlap or touch are refused rather than merged (a
typo such as ``9-12,12-16`` should not silently become one long range)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..config import UserError

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*$")


@dataclass(frozen=True, order=True)
class BarRange:
    """Bars ``first`` .. ``last`` (1-based, inclusive)."""

    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        return f"{self.first}-{self.last}" if self.last != self.first else str(self.first)


def parse_bar_ranges(spec: Any, option: str = "infill") -> tuple[BarRange, ...]:
    """``"9-12,25-28"`` (or ``12``, or a list of such) -> sorted ranges; a malformed, backwards, zero-based or
    overlapping range is a UserError naming the option."""
    parts = [str(p) for p in spec] if isinstance(spec, (list, tuple)) else str(spec).split(",")
    ranges = []
    for part in parts:
        match = _RANGE.match(part)
        if match is None:
            raise UserError(f"{option}={spec}: use bar ranges such as 9-12 or 9-12,25-28 (bars numbered from 1, "
                            "both ends included)")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if first < 1:
            raise UserError(f"{option}={spec}: bars are numbered from 1")
        if last < first:
            raise UserError(f"{option}={spec}: the range {first}-{last} runs backwards (write {last}-{first})")
        ranges.append(BarRange(first, last))
    ranges.sort()
    for before, after in zip(ranges, ranges[1:]):
        if after.first <= before.last + 1:
            raise UserError(f"{option}={spec}: the ranges {before} and {after} overlap or touch; write them as "
                            f"one range ({before.first}-{max(before.last, after.last)}) or leave a kept bar between")
    return tuple(ranges)


def check_within(ranges: tuple[BarRange, ...], bars: int, what: str, option: str = "infill") -> None:
    """Every range must lie inside the piece's ``bars`` bars."""
    beyond = [r for r in ranges if r.last > bars]
    if beyond:
        spec = ",".join(str(r) for r in ranges)
        raise UserError(f"{option}={spec}: {what} has {bars} bars, so bar(s) {beyond[0]} lie beyond its end")
