"""A stretch of time in a clip (black picture, frozen picture, silence) and how runs become stretches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Stretch:
    """[start, end) in seconds on the file's timeline."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def stretches(flags: Sequence[bool], starts: Sequence[float], end: float, min_seconds: float = 0.0) -> tuple[Stretch, ...]:
    """Merge consecutive flagged items into stretches; item i lasts from starts[i] to starts[i+1]
    (the last one to `end`). Stretches shorter than `min_seconds` are left out."""
    found, begin = [], None
    for i, flag in enumerate(flags):
        if flag and begin is None:
            begin = starts[i]
        elif not flag and begin is not None:
            found.append(Stretch(round(begin, 6), round(starts[i], 6)))
            begin = None
    if begin is not None:
        found.append(Stretch(round(begin, 6), round(end, 6)))
    return tuple(s for s in found if s.seconds >= min_seconds - 1e-9)


def longest(found: Sequence[Stretch]) -> float:
    return max((s.seconds for s in found), default=0.0)
