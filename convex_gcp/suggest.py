"""The value a user most likely meant, for fix lines that are right when run as printed.

Order of guesses: the same name in another case or spelling of separators; a name that the
value starts with (POSTGRES_17.2 → POSTGRES_17, production → prod) or the one name that starts
with it; a mix-up of two names part by part (db-f1-small → db-g1-small or db-f1-micro); then the
nearest names by spelling (difflib), only above a threshold. No good guess: an empty list, and
the caller lists the choices instead of inventing one.
"""

from __future__ import annotations

import difflib
import re
from typing import Callable, Sequence

CUTOFF = 0.75  # SequenceMatcher ratio below which a name is not a guess ("e2-mediun" → e2-medium is 0.89)


def _norm(text: str) -> str:
    return re.sub(r"[\s_.-]+", "", text.lower())


def closest(value: object, choices: Sequence[str], *, limit: int = 3) -> list[str]:
    """Choices the user most likely meant, best first. One: a confident guess; several: ambiguous."""
    text = str(value).strip()
    if not text or not choices:
        return []
    low = text.lower()
    same = [c for c in choices if c.lower() == low] or [c for c in choices if _norm(c) == _norm(text)]
    if same:
        return same[:1]
    starts = [c for c in choices if low.startswith(c.lower()) and len(c) >= 2]
    if starts:
        return [max(starts, key=len)]
    extends = [c for c in choices if c.lower().startswith(low)]
    if len(extends) == 1 and len(low) >= 2:
        return extends
    mixed = _mix_ups(low, choices)
    if len(mixed) > 1:
        return mixed[:limit]
    scored = sorted(((difflib.SequenceMatcher(None, low, c.lower()).ratio(), c) for c in choices), key=lambda s: -s[0])
    best = scored[0][0]
    return [c for ratio, c in scored if ratio >= CUTOFF and ratio >= best - 0.02][:limit]


def _mix_ups(low: str, choices: Sequence[str]) -> list[str]:
    """Names that differ from `low` in exactly one '-'-separated part, when every part of `low`
    is a real part at its place in some name: two names mixed up, so both are candidates."""
    parts = low.split("-")
    if len(parts) < 2:
        return []
    same_shape = [c for c in choices if len(c.split("-")) == len(parts)]
    known = [{c.lower().split("-")[i] for c in same_shape} for i in range(len(parts))]
    if not all(part in known[i] for i, part in enumerate(parts)):
        return []
    found = [c for c in same_shape if sum(a != b for a, b in zip(c.lower().split("-"), parts)) == 1]
    return sorted(found, key=lambda c: -difflib.SequenceMatcher(None, low, c.lower()).ratio())


def did_you_mean(candidates: Sequence[str]) -> str:
    """' (did you mean 'a'?)', ' (did you mean 'a' or 'b'?)' or ''."""
    if not candidates:
        return ""
    quoted = [repr(c) for c in candidates]
    shown = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f" (did you mean {shown}?)"


def fix_lines(set_line: Callable[[str, object], str], path: str, candidates: Sequence[object], choices: Sequence[object] = ()) -> str:
    """One command for a confident guess; otherwise one command per candidate (or per choice,
    when there is no guess at all), each runnable as printed."""
    if len(candidates) == 1:
        return set_line(path, candidates[0])
    options = list(candidates) or list(choices)
    if not options:
        return ""
    head = "no single likely value; run one of:" if candidates else "no close match; run one of:"
    return "\n".join([head] + [set_line(path, option) for option in options])


# PostgreSQL's unit names are case-sensitive; these are the spellings people type instead.
_UNIT_SPELLINGS = {
    "b": "B", "k": "kB", "kb": "kB", "kib": "kB", "m": "MB", "mb": "MB", "mib": "MB", "g": "GB", "gb": "GB", "gib": "GB",
    "t": "TB", "tb": "TB", "tib": "TB",
    "us": "us", "ms": "ms", "msec": "ms", "s": "s", "sec": "s", "secs": "s", "second": "s", "seconds": "s",
    "min": "min", "mins": "min", "minute": "min", "minutes": "min", "h": "h", "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
    "d": "d", "day": "d", "days": "d",
}
_NUMBER_UNIT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")


def unit_respelled(value: object) -> str | None:
    """'8mb' → '8MB', '30 sec' → '30s'; None when the unit is not a known misspelling."""
    match = _NUMBER_UNIT.match(str(value))
    if not match:
        return None
    unit = _UNIT_SPELLINGS.get(match.group(2).lower())
    return f"{match.group(1)}{unit}" if unit else None


def leading_number(value: object, units: Sequence[str]) -> int | None:
    """'20GB' for a field in GB → 20: the number, when the text only adds the field's own unit."""
    match = _NUMBER_UNIT.match(str(value))
    if match and match.group(2).lower() in {u.lower() for u in units} and float(match.group(1)).is_integer():
        return int(float(match.group(1)))
    return None
