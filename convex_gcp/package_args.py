"""The typed arguments of the ConvexOnGcp component, made from the configuration model itself.

Each pydantic model of `convex_gcp.settings` (Settings, NetworkSettings, ...) gets a dataclass with the
same fields (`NetworkSettings` → `NetworkArgs`), in types the Pulumi SDK's schema analyzer takes
(`pulumi.provider.experimental.analyzer`: str, int, float, bool, Optional, list, dict[str, T], Any,
nested classes; no Union, so a `Literal` becomes its base type and `flags` values are Any). The schema's
property names are the configuration keys (`connectionMode`, `database.diskSizeGb`), because the analyzer
camel-cases the field names exactly as the model's alias generator does. A new configuration key
therefore reaches every SDK without a second list to keep in step.

Whatever the consumer sets goes through `convex_gcp.settings.load_settings`, the function `pulumi up`
uses on a stack's config: the same rules and the same messages (key path, what is wrong, what is
allowed, a fix)."""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel

from convex_gcp.settings import PROJECT, LocalStackSettings, Settings

# Top-level fields that are not `convex-gcp:*` keys: the provider's project and region, and the stack.
_GCP_KEYS = {"project": "gcp:project", "region": "gcp:region"}
_DERIVED = {"stack"}


# Top-level models and their args' names; the local stack's model has derived fields that are no keys.
_TOP = {Settings: ("ConvexOnGcpArgs", None), LocalStackSettings: ("ConvexLocalArgs", ("stack", "environment", "convex", "local"))}


def _name(model: type[BaseModel]) -> str:
    return _TOP[model][0] if model in _TOP else model.__name__.removesuffix("Settings") + "Args"


def _arg_type(annotation: Any, made: dict[type, type]) -> Any:
    """The analyzer's type for a model field's annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return type(args[0])
    if origin is Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return Optional[_arg_type(rest[0], made)]
        return Any  # flags: str | int | float | bool
    if origin in (list, typing.List):
        return list[_arg_type(args[0], made)]
    if origin in (dict, typing.Dict):
        return dict[str, _arg_type(args[1], made)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _mirror(annotation, made)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return str
    return annotation


def _mirror(model: type[BaseModel], made: dict[type, type]) -> type:
    if model in made:
        return made[model]
    fields = []
    only = _TOP.get(model, ("", None))[1]
    for name, info in model.model_fields.items():
        if only is not None and name not in only:
            continue
        typ = _arg_type(info.annotation, made)
        required = info.is_required() and name not in _DERIVED
        if required:
            fields.append((name, typ))
        else:
            fields.append((name, Optional[typ] if typing.get_origin(typ) is not Union else typ, dataclasses.field(default=None)))
    cls = dataclasses.make_dataclass(_name(model), fields, kw_only=True)
    cls.__module__ = __name__
    key = "" if model in _TOP else f" (`{PROJECT}:{_KEY_OF.get(model, model.__name__)}`)"
    doc = (model.__doc__ or "").strip().split("\n\n", 1)[0]
    cls.__doc__ = f"{doc}{key}. Unset fields take the configuration's defaults (README, \"Configuration reference\")."
    made[model] = cls
    globals()[cls.__name__] = cls  # importable by name, like a class written out
    return cls


# The configuration key each nested model sits under, for the types' descriptions.
_KEY_OF: dict[type, str] = {}


def _index_keys(model: type[BaseModel], path: str) -> None:
    for name, info in model.model_fields.items():
        for arg in (info.annotation, *typing.get_args(info.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in _KEY_OF:
                alias = info.alias or name
                _KEY_OF[arg] = f"{path}.{alias}" if path else alias
                _index_keys(arg, _KEY_OF[arg])


_index_keys(Settings, "")
_index_keys(LocalStackSettings, "")
_MADE: dict[type, type] = {}
ConvexOnGcpArgs = _mirror(Settings, _MADE)
"""ConvexOnGcp's arguments: every configuration key, typed (see the module docstring)."""
ConvexLocalArgs = _mirror(LocalStackSettings, _MADE)
"""ConvexLocal's arguments: the keys of a `convex-gcp:target: local` stack (docs/local.md)."""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def _unwrap(typ: Any) -> Any:
    if typing.get_origin(typ) is Union:
        rest = [a for a in typing.get_args(typ) if a is not type(None)]
        return rest[0] if len(rest) == 1 else Any
    return typ


def _plain(value: Any, typ: Any, path: str) -> Any:
    """Args (dataclass instances, or the provider's mapped dicts with snake_case field names) → the
    config's JSON shape. The mirror's types say which dicts are objects (field names become the keys'
    camelCase) and which are maps whose keys are data (`database.flags`, `convex.env`)."""
    import pulumi

    if isinstance(value, pulumi.Output):
        raise ValueError(f"{path}: must be a plain value known at preview, not an Output: the settings decide which resources exist")
    typ = _unwrap(typ)
    if dataclasses.is_dataclass(typ):
        fields = {f.name: f.type for f in dataclasses.fields(typ)}
        items = {f: getattr(value, f) for f in fields} if dataclasses.is_dataclass(value) else dict(value)
        return {_camel(k): _plain(v, fields.get(k, Any), f"{path}.{k}") for k, v in items.items() if v is not None}
    origin = typing.get_origin(typ)
    if origin is dict:
        return {k: _plain(v, typing.get_args(typ)[1], f"{path}.{k}") for k, v in value.items() if v is not None}
    if origin is list:
        return [_plain(v, typing.get_args(typ)[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def to_config(args: Any, kind: Optional[type] = None) -> tuple[dict[str, Any], Optional[str]]:
    """The flat config map (`ns:key` → string, objects as JSON) `load_settings` reads, and the stack name
    if the args set one. `args`: a ConvexOnGcpArgs, or the dict of snake_case names the component
    provider passes (pulumi.provider.experimental.component.map_inputs); `kind` the args class (default
    ConvexOnGcpArgs)."""
    raw = getattr(args, "_config", None)
    if raw is not None:  # made by from_config: the stack's own config map, untouched
        return dict(raw), None
    values = _plain(args, kind or ConvexOnGcpArgs, "args")
    config: dict[str, Any] = {}
    stack = values.pop("stack", None)
    for key, value in values.items():
        flat = _GCP_KEYS.get(key, f"{PROJECT}:{key}")
        config[flat] = value if isinstance(value, str) else json.dumps(value)
    return config, stack


def from_config(config: dict[str, Any], local: bool = False) -> Any:
    """The args of a stack: its config map kept whole, so `pulumi up` reports exactly what it always did
    (unknown keys with a suggestion, `pulumi config set` fixes)."""
    args = ConvexLocalArgs() if local else ConvexOnGcpArgs(project=config.get("gcp:project", ""), region=config.get("gcp:region", ""), environment="")
    object.__setattr__(args, "_config", dict(config))
    return args


def mirrored_types() -> dict[str, type]:
    """Every generated class by name (the schema's type names)."""
    return {cls.__name__: cls for cls in _MADE.values()}
