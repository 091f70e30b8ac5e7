"""Configuration problems and the `pulumi config` lines that fix them.

A fix line is the value the user most likely meant (convex_gcp/suggest.py), runnable as printed:
no placeholders. When there is no good guess it says so and offers one command per choice.
Object fields are set with `--path`, whose values Pulumi stores as booleans for true/false,
integers for digit strings without a leading 0, and strings otherwise (pulumi
sdk/go/common/resource/config/map.go, adjustObjectValue), so lists are set item by item.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional, get_args

from pydantic import BaseModel
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from . import suggest

PROJECT = "convex-gcp"
_FIX_INDENT = " " * len("    fix:     ")


@dataclass(frozen=True)
class Problem:
    path: str  # e.g. convex-gcp:database.tier
    reason: str
    allowed: str
    fix: str

    def render(self) -> str:
        fix = self.fix.replace("\n", "\n" + _FIX_INDENT)
        return f"{self.path}: {self.reason}\n    allowed: {self.allowed}\n    fix:     {fix}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem], stack: str = "<stack>"):
        self.problems = problems
        lines = [f"{len(problems)} configuration problem(s) in stack {stack!r}; nothing was created:"]
        lines += [problem.render() for problem in problems]
        super().__init__("\n".join(lines))


def _quote(text: str) -> str:
    if text == "" or re.search(r"[\s\"'$*?&|;<>()`\\]", text):
        return "'" + text.replace("'", "'\\''") + "'"
    return text


def _uses_path(path: str) -> bool:
    namespace, _, key = path.partition(":")
    return namespace == PROJECT and ("." in key or "[" in key)


def set_line(path: str, value: Any) -> str:
    """The command that sets a config key; object fields use --path. A list under --path is
    removed and set item by item (an empty list: removed, which restores the default [])."""
    if isinstance(value, list) and _uses_path(path):
        lines = [rm_line(path)]
        lines += [set_line(f"{path}[{i}]", item) for i, item in enumerate(value)]
        return " && ".join(lines)
    shown = value if isinstance(value, str) else json.dumps(value)
    flag = " --path" if _uses_path(path) else ""
    return f"pulumi config set{flag} '{path}' {_quote(shown)}"


def rm_line(path: str) -> str:
    return f"pulumi config rm{' --path' if _uses_path(path) else ''} '{path}'"


def segment(name: str) -> str:
    """One --path segment: a key with a dot (cloudsql.iam_authentication) is quoted, or Pulumi
    would nest it."""
    return f'["{name}"]' if "." in name or "[" in name else f".{name}"


def key_path(loc: tuple[Any, ...]) -> str:
    """pydantic location → config key path (`convex-gcp:database.flags.work_mem`)."""
    parts = [str(part) for part in loc]
    if not parts:
        return f"{PROJECT}:"
    if parts[0] in ("project", "region"):
        return f"gcp:{parts[0]}"
    head = to_camel(parts[0])
    rest = "".join(f"[{part}]" if part.isdigit() else segment(part) for part in parts[1:])
    return f"{PROJECT}:{head}{rest}"


def _field(model: Any, part: Any) -> Optional[FieldInfo]:
    if not isinstance(part, str) or not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    found = model.model_fields.get(part)
    if found is None:
        found = next((f for f in model.model_fields.values() if f.alias == part), None)
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    return [a for a in (get_args(annotation) or (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]


def model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: Any = root
    for part in loc:
        field = _field(model, part)
        # Optional[Model] (convex-gcp:domain) names its model among the union's members.
        models = _models_in(field.annotation) if field is not None else []
        if not models:
            return None
        model = models[0]
    return model


def field_at(root: type[BaseModel], loc: tuple[Any, ...]) -> Optional[FieldInfo]:
    """The field a pydantic location points at (a list item's location: the list's field)."""
    while loc and isinstance(loc[-1], int):
        loc = loc[:-1]
    if not loc:
        return None
    return _field(model_at(root, loc[:-1]), loc[-1])


def _default(field: Optional[FieldInfo]) -> Any:
    if field is None:
        return None
    value = field.get_default(call_default_factory=True)
    return None if value is PydanticUndefined or isinstance(value, BaseModel) else value


def _units(name: str) -> tuple[str, ...]:
    if name.endswith(("_gb", "Gb")):
        return ("g", "gb", "gib")
    if name.endswith(("_sec", "_seconds", "Sec", "Seconds")):
        return ("s", "sec", "secs", "seconds")
    if name.endswith(("_days", "Days")):
        return ("d", "day", "days")
    return ()


def _choices(expected: str) -> list[Any]:
    """pydantic's "'dev' or 'prod'" / "60, 300, 600 or 900" → the values."""
    quoted = re.findall(r"'([^']*)'", expected)
    return quoted if quoted else [int(n) for n in re.findall(r"-?\d+", expected)]


def _nearest_numbers(value: Any, choices: list[int]) -> list[int]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return []
    best = min(abs(c - number) for c in choices)
    return [c for c in choices if abs(c - number) == best]


# Required keys without a default: a value everyone can run. gcp:project is the caller's own gcloud project.
_MISSING = {
    "environment": "dev",
}


def problem_from_pydantic(error: dict[str, Any], root: type[BaseModel]) -> Problem:
    loc = tuple(error["loc"])
    path = key_path(loc)
    ctx = error.get("ctx") or {}
    kind = error["type"]
    value = error.get("input")
    field = field_at(root, loc)
    default = _default(field)
    if kind == "extra_forbidden":
        parent = model_at(root, loc[:-1]) or root
        known = sorted(f.alias or name for name, f in parent.model_fields.items() if name != "stack")
        close = suggest.closest(str(loc[-1]), known, limit=1)
        fix = rm_line(path)
        if close:
            fix += " && " + set_line(key_path(loc[:-1] + (close[0],)), value)
        return Problem(path, f"unknown key {str(loc[-1])!r}{suggest.did_you_mean(close)}", "keys: " + ", ".join(known), fix)
    if kind == "convex_gcp":
        if "candidates" not in ctx:  # a rule with one right value
            return Problem(path, ctx["reason"], ctx["allowed"], set_line(path, ctx["example"]))
        candidates = list(ctx["candidates"])
        reason = ctx["reason"] + suggest.did_you_mean(candidates)
        return Problem(path, reason, ctx["allowed"], suggest.fix_lines(set_line, path, candidates, [ctx["example"]]))
    if kind == "literal_error":
        choices = _choices(ctx.get("expected", ""))
        if choices and isinstance(choices[0], int):
            candidates = _nearest_numbers(value, choices)
        else:
            candidates = suggest.closest(value, choices)
        allowed = "one of " + ", ".join(map(str, choices))
        return Problem(path, f"{value!r} is not allowed{suggest.did_you_mean(candidates)}", allowed, suggest.fix_lines(set_line, path, candidates, choices))
    if kind == "missing":
        if path == "gcp:project":
            return Problem(path, "is required and not set", "your Google Cloud project id", "pulumi config set gcp:project \"$(gcloud config get-value project)\"")
        example = _MISSING.get(str(loc[-1]))
        allowed = "see the README's configuration reference"
        if example is None:
            return Problem(path, "is required and not set", allowed, f"no default: pulumi config set{' --path' if _uses_path(path) else ''} '{path}' with your value")
        return Problem(path, "is required and not set", allowed, set_line(path, example))
    if kind in ("bool_parsing", "bool_type"):
        candidates = suggest.closest(value, ["true", "false"])
        return Problem(path, f"{value!r} is not true or false{suggest.did_you_mean(candidates)}", "true or false", suggest.fix_lines(set_line, path, candidates, ["true", "false"]))
    if kind in ("int_parsing", "int_type", "int_from_float", "float_parsing", "float_type"):
        return _number_problem(path, kind, value, default, ctx, field, str(loc[-1] if not isinstance(loc[-1], int) else loc[-2]))
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bound = ctx.get("ge", ctx.get("le"))
        allowed = _bounds_text(field) or error["msg"]
        guess = bound if bound is not None else default
        return Problem(path, f"{value!r} is out of range", allowed, suggest.fix_lines(set_line, path, [guess] if guess is not None else []))
    if kind in ("list_type",) and isinstance(value, (str, int, float)):
        # `pulumi config set --path k '["a"]'` stores the JSON text as one string: the fix sets its elements.
        return Problem(path, f"{value!r} is one value; this key takes a list", "a list", set_line(path, _as_list(value)))
    if kind in ("model_type", "dict_type"):
        return Problem(path, f"{value!r} is not an object", "an object: set its fields one by one with --path", rm_line(path))
    # Anything else: the default, which is always allowed, when there is one.
    fix = set_line(path, default) if default is not None else rm_line(path)
    return Problem(path, f"{value!r}: {error['msg']}", _bounds_text(field) or error["msg"], fix)


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            return parsed
    return [value]


def _bounds_text(field: Optional[FieldInfo]) -> str:
    if field is None:
        return ""
    bounds = {}
    for meta in field.metadata:
        for key in ("ge", "gt", "le", "lt"):
            if getattr(meta, key, None) is not None:
                bounds[key] = getattr(meta, key)
    low = bounds.get("ge", bounds.get("gt"))
    high = bounds.get("le", bounds.get("lt"))
    if low is not None and high is not None:
        return f"{low} to {high}" if "gt" not in bounds and "lt" not in bounds else f"more than {low}, at most {high}"
    if low is not None:
        return f"at least {low}"
    if high is not None:
        return f"at most {high}"
    return ""


def _number_problem(path: str, kind: str, value: Any, default: Any, ctx: dict, field: Optional[FieldInfo], name: str) -> Problem:
    whole = kind.startswith("int")
    what = "a whole number" if whole else "a number"
    allowed = what + (f", {_bounds_text(field)}" if _bounds_text(field) else "")
    number = suggest.leading_number(value, _units(name))
    if number is None and kind == "int_from_float" and isinstance(value, float):
        number = round(value)
    if number is not None:
        return Problem(path, f"{value!r} is not {what}{suggest.did_you_mean([str(number)])}", allowed, set_line(path, number))
    if default is not None:
        return Problem(path, f"{value!r} is not {what}; the fix restores the default", allowed, set_line(path, default))
    low = None
    if field is not None:
        for meta in field.metadata:
            low = getattr(meta, "ge", None) if low is None else low
    if low is not None:
        return Problem(path, f"{value!r} is not {what}; there is no default, the fix sets the smallest allowed", allowed, set_line(path, low))
    return Problem(path, f"{value!r} is not {what}", allowed, f"no default: pulumi config set --path '{path}' with your number")
