"""One diagnosis result: pass/fail (or warn/skip) with what was seen and the fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Status = Literal["pass", "fail", "warn", "skip"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "warn", "skip")

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def passed(name: str, detail: str) -> Check:
    return Check(name, "pass", detail)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


def warned(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def skipped(name: str, detail: str) -> Check:
    return Check(name, "skip", detail)


def render(checks: list[Check]) -> str:
    marks = {"pass": "PASS", "fail": "FAIL", "warn": "WARN", "skip": "SKIP"}
    lines = []
    for check in checks:
        lines.append(f"[{marks[check.status]}] {check.name}: {check.detail}")
        if check.fix and check.status in ("fail", "warn"):
            lines += [f"       fix: {line}" for line in check.fix.splitlines()]
    failures = sum(c.status == "fail" for c in checks)
    lines.append(f"{len(checks)} checks, {failures} failed")
    return "\n".join(lines)
