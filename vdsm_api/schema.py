"""Load the API schema (vdsm-api.yml) and check arguments against it.

The schema is the one declaration of every verb. This module turns it into typed objects
(:class:`Verb`, :class:`Param`, :class:`ParamType`) and converts wire values into Python
values, raising InvalidParameter (1000) that names the parameter for anything missing, of the
wrong type, or outside its enum. Every value is first bounded by vdsm.validation.wire_value
(depth, number of values, string length, only JSON-like types), so no conversion below sees
bytes, a datetime, a lone surrogate or a thousand-deep list. The RPC bindings, vdsClient and
the doc generator all read the schema through here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from vdsm import validation
from vdsm.errors import InvalidParameter

SCHEMA_FILE = "vdsm-api.yml"
SCALARS = ("uuid", "uuid_or_blank", "uuid_or_null", "string", "int", "bool", "size", "dict", "any")


class SchemaError(Exception):
    """The schema file itself is inconsistent (a bug caught at load, never a user error)."""


@dataclass(frozen=True)
class EnumType:
    name: str
    values: tuple[str, ...]
    aliases: Mapping[str, str]  # legacy numbers (as strings) → value

    def convert(self, value: object, param: str) -> str:
        if isinstance(value, bool):
            raise InvalidParameter(param, value, f"expected one of {', '.join(self.values)}")
        key = str(value).strip() if isinstance(value, str | int) else ""
        if key in self.values:
            return key
        if key in self.aliases:
            return self.aliases[key]
        accepted = ", ".join(self.values)
        if self.aliases:
            accepted += " (or " + ", ".join(f"{k}={v}" for k, v in self.aliases.items()) + ")"
        raise InvalidParameter(param, value, f"expected one of {accepted}")


@dataclass(frozen=True)
class StructType:
    name: str
    description: str
    fields: Mapping[str, ParamType]


@dataclass(frozen=True)
class ParamType:
    kind: str  # a scalar kind, "list", "enum" or "struct"
    item: ParamType | None = None
    enum: EnumType | None = None
    struct: StructType | None = None

    def describe(self) -> str:
        if self.kind == "list" and self.item is not None:
            return f"list of {self.item.describe()}"
        if self.enum is not None:
            return self.enum.name
        if self.struct is not None:
            return self.struct.name
        return self.kind

    def convert(self, value: object, param: str) -> Any:
        """Check ``value`` and return it as the API layer takes it."""
        if self.enum is not None:
            return self.enum.convert(value, param)
        if self.struct is not None:
            return _convert_struct(self.struct, value, param)
        if self.kind == "list":
            assert self.item is not None
            if isinstance(value, str):  # VDSM's legacy clients send "a,b,c"
                value = [part for part in value.split(",") if part.strip()]
            if not isinstance(value, list | tuple):
                raise InvalidParameter(param, value, "expected a list")
            return [self.item.convert(v, f"{param}[{i}]") for i, v in enumerate(value)]
        return _convert_scalar(self.kind, value, param)


def _convert_scalar(kind: str, value: object, param: str) -> Any:
    if kind == "uuid":
        return validation.uuid(value, param)
    if kind == "uuid_or_blank":
        return validation.uuid(value, param, allow_blank=True)
    if kind == "uuid_or_null":
        return None if value is None else validation.uuid(value, param)
    if kind == "size":
        return validation.size_bytes(value, param)
    if kind == "string":
        return validation.string(value, param)
    if kind == "int":
        return validation.integer(value, param)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise InvalidParameter(param, value, "expected true or false")
    if kind == "dict":
        if not isinstance(value, dict):
            raise InvalidParameter(param, value, "expected a mapping")
        return value  # its keys and values were bounded by wire_value
    return value  # any: JSON-like and bounded, by wire_value


def _convert_struct(struct: StructType, value: object, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidParameter(param, value, f"expected a {struct.name} mapping")
    converted = dict(value)  # keys not declared are kept: callers may send extra keys
    for name, ftype in struct.fields.items():
        if name not in value:
            raise InvalidParameter(f"{param}.{name}", None, "missing")
        converted[name] = ftype.convert(value[name], f"{param}.{name}")
    return converted


_NO_DEFAULT = object()


@dataclass(frozen=True)
class Param:
    name: str  # the wire name
    arg: str  # the Python keyword of the API method
    type: ParamType
    description: str
    default: Any = _NO_DEFAULT

    @property
    def required(self) -> bool:
        return self.default is _NO_DEFAULT


@dataclass(frozen=True)
class Verb:
    name: str | None  # JSON-RPC name
    xmlrpc: str | None  # legacy XML-RPC name
    call: str  # "<namespace>.<method>" of the API objects
    summary: str
    params: tuple[Param, ...]
    xmlrpc_params: tuple[Param, ...]
    returns: str
    xmlrpc_key: str | None
    xmlrpc_merge: bool
    errors: tuple[int, ...]
    spm: bool = False
    # It only reads domain storage, in the request: bounded by the dispatcher, since storage
    # that stops answering would hold the caller for as long as it stays silent.
    storage_read: bool = False

    @property
    def title(self) -> str:
        return self.name or self.xmlrpc or self.call

    def bind_named(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """JSON-RPC: named wire values → API keyword arguments (checked and converted)."""
        known = {p.name for p in self.params}
        unknown = sorted(set(values) - known, key=str)
        if unknown:
            # The name is the client's: quoted escaped and short, never as sent.
            name = validation.shown(unknown[0], 40)
            raise InvalidParameter(name, "...", "unknown parameter")
        return {p.arg: self._value(p, values) for p in self.params}

    def bind_positional(self, values: Sequence[Any]) -> dict[str, Any]:
        """XML-RPC: positional wire values in the legacy order → API keyword arguments."""
        order = self.xmlrpc_params
        if len(values) > len(order):
            raise InvalidParameter(
                "arguments", len(values), f"{self.xmlrpc} takes at most {len(order)}"
            )
        named = {p.name: v for p, v in zip(order, values, strict=False)}
        kwargs = {p.arg: self._value(p, named) for p in order}
        # Parameters that only the JSON-RPC form has get their defaults.
        for p in self.params:
            if p.arg not in kwargs:
                kwargs[p.arg] = self._value(p, {})
        return kwargs

    def _value(self, param: Param, values: Mapping[str, Any]) -> Any:
        if param.name in values and values[param.name] is not None:
            value = values[param.name]
            validation.wire_value(value, param.name)
            return param.type.convert(value, param.name)
        if param.required:
            raise InvalidParameter(param.name, None, "missing")
        return param.default


@dataclass(frozen=True)
class Schema:
    verbs: tuple[Verb, ...]
    enums: Mapping[str, EnumType]
    structs: Mapping[str, StructType]

    @functools.cached_property
    def by_name(self) -> dict[str, Verb]:
        return {v.name: v for v in self.verbs if v.name}

    @functools.cached_property
    def by_xmlrpc(self) -> dict[str, Verb]:
        return {v.xmlrpc: v for v in self.verbs if v.xmlrpc}


@functools.cache
def load() -> Schema:
    """The schema shipped with the package (parsed once per process)."""
    text = resources.files("vdsm_api").joinpath(SCHEMA_FILE).read_text("utf-8")
    return parse(yaml.safe_load(text))


def parse(doc: Mapping[str, Any]) -> Schema:
    enums = {
        name: EnumType(
            name=name,
            values=tuple(spec["values"]),
            aliases={str(k): v for k, v in (spec.get("aliases") or {}).items()},
        )
        for name, spec in (doc.get("enums") or {}).items()
    }
    structs: dict[str, StructType] = {}
    for name, spec in (doc.get("structs") or {}).items():
        fields = {f: _param_type(t, enums, structs) for f, t in spec["fields"].items()}
        structs[name] = StructType(name, spec.get("description", ""), fields)
    verbs = tuple(_verb(spec, enums, structs) for spec in doc["verbs"])
    _check_unique([v.name for v in verbs if v.name], "JSON-RPC verb")
    _check_unique([v.xmlrpc for v in verbs if v.xmlrpc], "XML-RPC verb")
    return Schema(verbs=verbs, enums=enums, structs=structs)


def _param_type(
    spec: Any, enums: Mapping[str, EnumType], structs: Mapping[str, StructType]
) -> ParamType:
    if isinstance(spec, dict) and set(spec) == {"list"}:
        return ParamType("list", item=_param_type(spec["list"], enums, structs))
    if spec in SCALARS:
        return ParamType(spec)
    if spec in enums:
        return ParamType("enum", enum=enums[spec])
    if spec in structs:
        return ParamType("struct", struct=structs[spec])
    raise SchemaError(f"unknown type {spec!r}")


def _param(
    spec: Mapping[str, Any], enums: Mapping[str, EnumType], structs: Mapping[str, StructType]
) -> Param:
    return Param(
        name=spec["name"],
        arg=spec["arg"],
        type=_param_type(spec["type"], enums, structs),
        description=spec.get("description", ""),
        default=spec.get("default", _NO_DEFAULT),
    )


def _verb(
    spec: Mapping[str, Any], enums: Mapping[str, EnumType], structs: Mapping[str, StructType]
) -> Verb:
    title = spec.get("name") or spec.get("xmlrpc")
    if not title or "call" not in spec:
        raise SchemaError(f"verb without a name or call: {spec!r}")
    params = tuple(_param(p, enums, structs) for p in spec.get("params") or [])
    by_name = {p.name: p for p in params}
    xmlrpc_params: list[Param] = []
    for entry in spec.get("xmlrpc_params", [p.name for p in params]):
        if isinstance(entry, str):
            if entry not in by_name:
                raise SchemaError(f"{title}: xmlrpc_params names unknown parameter {entry}")
            xmlrpc_params.append(by_name[entry])
        else:
            xmlrpc_params.append(_param(entry, enums, structs))
    returns = spec.get("returns") or {}
    return Verb(
        name=spec.get("name"),
        xmlrpc=spec.get("xmlrpc"),
        call=spec["call"],
        summary=spec.get("summary", ""),
        params=params,
        xmlrpc_params=tuple(xmlrpc_params),
        returns=returns.get("description", ""),
        xmlrpc_key=returns.get("xmlrpc_key"),
        xmlrpc_merge=bool(returns.get("xmlrpc_merge", False)),
        errors=tuple(spec.get("errors") or ()),
        spm=bool(spec.get("spm", False)),
        storage_read=bool(spec.get("storage_read", False)),
    )


def _check_unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SchemaError(f"{what} {name} declared twice")
        seen.add(name)
