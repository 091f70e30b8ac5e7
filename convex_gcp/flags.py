"""Cloud SQL database flags: a typed catalogue and conversion to the API's strings.

Values may use PostgreSQL units ("256MB", "30s"); Cloud SQL receives integers in the
flag's base unit, because whether its API accepts unit suffixes is not documented.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, Union

FlagValue = Union[str, int, float, bool]

# Multipliers to bytes and to microseconds; PostgreSQL's unit names are case-sensitive.
_MEMORY_UNITS = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_TIME_UNITS = {"us": 1, "ms": 1000, "s": 1000**2, "min": 60 * 1000**2, "h": 3600 * 1000**2, "d": 86400 * 1000**2}
_NUMBER_WITH_UNIT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


@dataclass(frozen=True)
class FlagSpec:
    kind: Literal["int", "memory", "time", "bool", "real", "enum"]
    base_unit: str = ""  # "8kB", "kB", "MB" for memory; "ms", "s", "min" for time
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    restarts: bool = False

    def describe(self) -> str:
        if self.kind == "bool":
            return "on or off (true/false)"
        if self.kind == "enum":
            return "one of " + ", ".join(self.choices)
        bounds = f"{_fmt(self.minimum)} to {_fmt(self.maximum)}"
        if self.kind == "memory":
            return f"a size such as 256MB or an integer in {self.base_unit} units, {bounds} {self.base_unit}"
        if self.kind == "time":
            return f"a duration such as 30s or an integer in {self.base_unit}, {bounds} {self.base_unit}"
        return f"a number from {bounds}"


def _fmt(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else str(value)


INT_MAX = 2147483647

# The flags Convex operators tune; Cloud SQL supports many more, add them here when needed.
FLAGS: dict[str, FlagSpec] = {
    "max_connections": FlagSpec("int", minimum=14, maximum=262143, restarts=True),
    "shared_buffers": FlagSpec("memory", "8kB", minimum=16, maximum=INT_MAX // 2, restarts=True),
    "effective_cache_size": FlagSpec("memory", "8kB", minimum=1, maximum=INT_MAX),
    "work_mem": FlagSpec("memory", "kB", minimum=64, maximum=INT_MAX),
    "maintenance_work_mem": FlagSpec("memory", "kB", minimum=1024, maximum=INT_MAX),
    "autovacuum_work_mem": FlagSpec("memory", "kB", minimum=-1, maximum=INT_MAX),
    "temp_file_limit": FlagSpec("memory", "kB", minimum=-1, maximum=INT_MAX),
    "log_temp_files": FlagSpec("memory", "kB", minimum=-1, maximum=INT_MAX),
    "max_wal_size": FlagSpec("memory", "MB", minimum=2, maximum=INT_MAX),
    "min_wal_size": FlagSpec("memory", "MB", minimum=32, maximum=INT_MAX),
    "wal_buffers": FlagSpec("memory", "8kB", minimum=-1, maximum=262143, restarts=True),
    "log_min_duration_statement": FlagSpec("time", "ms", minimum=-1, maximum=INT_MAX),
    "statement_timeout": FlagSpec("time", "ms", minimum=0, maximum=INT_MAX),
    "lock_timeout": FlagSpec("time", "ms", minimum=0, maximum=INT_MAX),
    "idle_in_transaction_session_timeout": FlagSpec("time", "ms", minimum=0, maximum=INT_MAX),
    "idle_session_timeout": FlagSpec("time", "ms", minimum=0, maximum=INT_MAX),
    "checkpoint_timeout": FlagSpec("time", "s", minimum=30, maximum=86400),
    "autovacuum_naptime": FlagSpec("time", "s", minimum=1, maximum=2147483),
    "random_page_cost": FlagSpec("real", minimum=0, maximum=1.79769e308),
    "effective_io_concurrency": FlagSpec("int", minimum=0, maximum=1000),
    "max_worker_processes": FlagSpec("int", minimum=8, maximum=4096, restarts=True),
    "max_parallel_workers": FlagSpec("int", minimum=0, maximum=1024),
    "max_parallel_workers_per_gather": FlagSpec("int", minimum=0, maximum=1024),
    "autovacuum_vacuum_scale_factor": FlagSpec("real", minimum=0, maximum=100),
    "autovacuum_analyze_scale_factor": FlagSpec("real", minimum=0, maximum=100),
    "autovacuum_max_workers": FlagSpec("int", minimum=1, maximum=262143, restarts=True),
    "log_checkpoints": FlagSpec("bool"),
    "log_connections": FlagSpec("bool"),
    "log_disconnections": FlagSpec("bool"),
    "log_lock_waits": FlagSpec("bool"),
    "track_io_timing": FlagSpec("bool"),
    "cloudsql.iam_authentication": FlagSpec("bool"),
    "cloudsql.enable_pgaudit": FlagSpec("bool", restarts=True),
    "cloudsql.logical_decoding": FlagSpec("bool", restarts=True),
    "log_statement": FlagSpec("enum", choices=("none", "ddl", "mod", "all")),
}


class FlagError(ValueError):
    """A flag name or value Cloud SQL would reject; the message says what is allowed."""

    def __init__(self, reason: str, allowed: str, example: str):
        super().__init__(reason)
        self.reason, self.allowed, self.example = reason, allowed, example


def _base_multiplier(spec: FlagSpec) -> int:
    if spec.kind == "memory":
        return 8192 if spec.base_unit == "8kB" else _MEMORY_UNITS[spec.base_unit]
    return _TIME_UNITS[spec.base_unit]


def _example(spec: FlagSpec) -> str:
    return {"memory": "256MB", "time": "30s", "bool": "on", "enum": spec.choices[0] if spec.choices else ""}.get(
        spec.kind, _fmt(spec.minimum if spec.minimum is not None else 0)
    )


def convert_flag(name: str, value: FlagValue) -> str:
    """The API string for one flag: integers in the base unit, on/off for booleans."""
    spec = FLAGS.get(name)
    if spec is None:
        raise FlagError(f"unknown flag {name!r}", "one of the flags listed in the README", "")
    allowed, example = spec.describe(), _example(spec)

    if spec.kind == "bool":
        truth = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}
        key = str(value).strip().lower()
        if isinstance(value, bool) or key in truth:
            return "on" if (value if isinstance(value, bool) else truth[key]) else "off"
        raise FlagError(f"{value!r} is not a boolean", allowed, example)

    if isinstance(value, bool):
        raise FlagError(f"{value!r} is a boolean, not a number", allowed, example)

    if spec.kind == "enum":
        if str(value) in spec.choices:
            return str(value)
        raise FlagError(f"{value!r} is not allowed", allowed, example)

    if spec.kind == "real":
        try:
            number = float(value)
        except ValueError:
            raise FlagError(f"{value!r} is not a number", allowed, example) from None
        _check_range(number, spec, value, allowed, example)
        return _fmt(number)

    match = _NUMBER_WITH_UNIT.match(str(value))
    if not match:
        raise FlagError(f"{value!r} is not a number with an optional unit", allowed, example)
    number, unit = float(match.group(1)), match.group(2)

    if spec.kind == "int":
        if unit or not number.is_integer():
            raise FlagError(f"{value!r} is not a whole number", allowed, example)
        result = int(number)
    else:
        units = _MEMORY_UNITS if spec.kind == "memory" else _TIME_UNITS
        if not unit:
            if not number.is_integer():
                raise FlagError(f"{value!r} is not a whole number of {spec.base_unit}", allowed, example)
            result = int(number)
        elif unit not in units:
            names = ", ".join(units)
            raise FlagError(f"unit {unit!r} in {value!r} is not a PostgreSQL {spec.kind} unit ({names})", allowed, example)
        else:
            scaled = number * units[unit] / _base_multiplier(spec)
            # -1 means "disabled" for several flags and carries no unit.
            if not math.isclose(scaled, round(scaled)) or number < 0:
                raise FlagError(
                    f"{value!r} is not a whole number of {spec.base_unit} (the flag's base unit)", allowed, example
                )
            result = round(scaled)
    _check_range(result, spec, value, allowed, example)
    return str(result)


def _check_range(number: float, spec: FlagSpec, value: FlagValue, allowed: str, example: str) -> None:
    if spec.minimum is not None and number < spec.minimum or spec.maximum is not None and number > spec.maximum:
        raise FlagError(f"{value!r} is out of range", allowed, example)


def flag_bytes(name: str, api_value: str) -> int:
    """Size in bytes of a converted memory flag (for checks against instance memory)."""
    return int(api_value) * _base_multiplier(FLAGS[name])
