"""Generate the Markdown API reference (docs/api.md) from the schema and vdsm.errors.

    python -m vdsm_api.docs > docs/api.md     # regenerate
    python -m vdsm_api.docs --check           # exit 1 if docs/api.md is not current

For every verb: its JSON-RPC and XML-RPC names, summary, parameters (JSON-RPC order) with
type, default and description, the XML-RPC positional order, what it returns and under which
envelope key, and the error codes it may answer with. Then the enums (with their legacy numeric
aliases), the structs and the table of every error code. The output depends on nothing but the
schema and the error classes (no dates, no versions), so the check is exact.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from vdsm.errors import all_error_types
from vdsm_api import schema as api_schema
from vdsm_api.schema import Param, ParamType, Schema, Verb

DOCS_FILE = Path(__file__).resolve().parents[1] / "docs" / "api.md"
REGENERATE = "python -m vdsm_api.docs > docs/api.md"
# Codes every verb may answer besides those the schema lists for it.
COMMON_ERRORS = (100, 1000)
# The order of the groups (JSON-RPC namespaces); others follow alphabetically.
GROUP_ORDER = ("Host", "Task", "StoragePool", "StorageDomain", "Image", "Volume", "VM")


def error_table() -> dict[int, tuple[str, str]]:
    """code → (VDSM name, title), by code; the first class declaring a code wins (for 100,
    the base class: GeneralException)."""
    table: dict[int, tuple[str, str]] = {}
    for cls in all_error_types():
        table.setdefault(cls.code, (cls.name, cls.title))
    return dict(sorted(table.items()))


def verb_group(verb: Verb, schema: Schema) -> str:
    """The JSON-RPC namespace of a verb; a legacy-only verb joins the verbs of its API object."""
    if verb.name:
        return verb.name.split(".", 1)[0]
    namespace = verb.call.split(".", 1)[0]
    for other in schema.verbs:
        if other.name and other.call.split(".", 1)[0] == namespace:
            return other.name.split(".", 1)[0]
    return "Other"


def grouped(schema: Schema, verbs: Iterable[Verb]) -> dict[str, list[Verb]]:
    groups: dict[str, list[Verb]] = {}
    for verb in verbs:
        groups.setdefault(verb_group(verb, schema), []).append(verb)
    rank = {name: index for index, name in enumerate(GROUP_ORDER)}
    return dict(sorted(groups.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def generate(schema: Schema) -> str:
    errors = error_table()
    out: list[str] = [
        "# vdsm API reference",
        "",
        "<!-- Generated from vdsm_api/vdsm-api.yml and vdsm/errors.py; do not edit. -->",
        f"<!-- Regenerate with `{REGENERATE}`. -->",
        "",
        "vdsmd answers the same verbs two ways:",
        "",
        "- **XML-RPC** on `POST /RPC2`: VDSM's legacy verb names with *positional* arguments in "
        "the legacy order; every answer is VDSM's envelope "
        "`{'status': {'code': int, 'message': str}, ...}` with the payload under the verb's "
        "envelope key (or merged into the envelope). Integers beyond 32 bits travel as "
        "decimal strings.",
        "- **JSON-RPC 2.0** on `POST /jsonrpc`: the namespaced names with *named* parameters; "
        "the payload is the `result`, and a non-zero status is a JSON-RPC `error` "
        "`{code, message}` with VDSM's code.",
        "",
        "A request may carry a `FlowID` header; the daemon logs it with every call. "
        "Code 0 is success; see [Error codes](#error-codes) for the others.",
        "",
        "## Verbs",
        "",
    ]
    groups = grouped(schema, schema.verbs)
    for group, verbs in groups.items():
        links = ", ".join(f"[`{_heading(v)}`](#{_anchor(_heading(v))})" for v in verbs)
        out.append(f"- **{group}**: {links}")
    out.append("")
    for group, verbs in groups.items():
        out += [f"## {group}", ""]
        for verb in verbs:
            out += _verb_section(verb, errors)
    out += _enum_section(schema)
    out += _struct_section(schema)
    out += _error_section(errors)
    return "\n".join(out).rstrip("\n") + "\n"


def _heading(verb: Verb) -> str:
    return verb.name or str(verb.xmlrpc)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _verb_section(verb: Verb, errors: dict[int, tuple[str, str]]) -> list[str]:
    names = [
        f"JSON-RPC: `{verb.name}`" if verb.name else "JSON-RPC: —",
        f"XML-RPC: `{verb.xmlrpc}`" if verb.xmlrpc else "XML-RPC: —",
    ]
    if verb.spm:
        names.append("SPM only (else 654)")
    out = [f"### {_heading(verb)}", "", " · ".join(names), "", _cell(verb.summary), ""]
    if verb.params:
        out += _param_table(verb.params)
    else:
        out += ["Parameters: none.", ""]
    if verb.xmlrpc:
        order = ", ".join(f"`{p.name}`" for p in verb.xmlrpc_params) or "none"
        out.append(f"XML-RPC positional order: {order}.")
        jsonrpc_names = {p.name for p in verb.params}
        legacy = [p for p in verb.xmlrpc_params if p.name not in jsonrpc_names]
        if legacy:
            out += ["", "Legacy-only parameters (XML-RPC):", ""]
            out += _param_table(legacy)
        else:
            out.append("")
        xmlrpc_names = {p.name for p in verb.xmlrpc_params}
        json_only = [p for p in verb.params if p.name not in xmlrpc_names]
        if json_only and verb.name:
            names_only = ", ".join(f"`{p.name}`" for p in json_only)
            out += [f"Not in the XML-RPC form (they take their defaults): {names_only}.", ""]
    out.append(f"**Returns:** {_cell(verb.returns or 'nothing')}. {_envelope_note(verb)}")
    out.append("")
    codes = list(verb.errors) + [c for c in COMMON_ERRORS if c not in verb.errors]
    out += ["**Errors:**", "", "| code | name | meaning |", "|---:|---|---|"]
    for code in codes:
        name, title = errors.get(code, ("?", "not declared in vdsm/errors.py"))
        out.append(f"| {code} | {name} | {_cell(title)} |")
    out.append("")
    return out


def _envelope_note(verb: Verb) -> str:
    if verb.xmlrpc is None:
        return "(JSON-RPC only.)"
    if verb.xmlrpc_key:
        return f"XML-RPC envelope key: `{verb.xmlrpc_key}`."
    if verb.xmlrpc_merge:
        return "XML-RPC: the keys are merged into the envelope."
    return "XML-RPC: the envelope's status only."


def _param_table(params: Sequence[Param]) -> list[str]:
    out = ["| parameter | type | default | description |", "|---|---|---|---|"]
    for p in params:
        default = "*required*" if p.required else f"`{_value(p.default)}`"
        out.append(f"| `{p.name}` | {_type(p.type)} | {default} | {_cell(p.description)} |")
    out.append("")
    return out


def _type(ptype: ParamType) -> str:
    if ptype.kind == "list" and ptype.item is not None:
        return f"list of {_type(ptype.item)}"
    if ptype.enum is not None or ptype.struct is not None:
        name = ptype.describe()
        return f"[{name}](#{_anchor(name)})"
    return ptype.kind


def _value(value: object) -> str:
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _enum_section(schema: Schema) -> list[str]:
    out = ["## Enums", "", "Enum parameters take the value's name, or its legacy number.", ""]
    for enum in schema.enums.values():
        out += [f"### {enum.name}", ""]
        out += ["| value | legacy numeric alias |", "|---|---|"]
        by_value: dict[str, list[str]] = {}
        for number, value in enum.aliases.items():
            by_value.setdefault(value, []).append(number)
        for value in enum.values:
            numbers = ", ".join(f"`{n}`" for n in by_value.get(value, [])) or "—"
            out.append(f"| `{value}` | {numbers} |")
        out.append("")
    return out


def _struct_section(schema: Schema) -> list[str]:
    if not schema.structs:
        return []
    out = ["## Structs", ""]
    for struct in schema.structs.values():
        out += [f"### {struct.name}", "", _cell(struct.description), ""]
        out += ["| field | type |", "|---|---|"]
        out += [f"| `{name}` | {_type(ftype)} |" for name, ftype in struct.fields.items()]
        out.append("")
    return out


def _error_section(errors: dict[int, tuple[str, str]]) -> list[str]:
    out = [
        "## Error codes",
        "",
        "VDSM's numbers and names. Every message adds what is at fault (the volume, the "
        "parameter, ...) after the title.",
        "",
        "| code | name | meaning |",
        "|---:|---|---|",
        "| 0 | — | success (`Done`) |",
    ]
    out += [f"| {code} | {name} | {_cell(title)} |" for code, (name, title) in errors.items()]
    out.append("")
    return out


def check(path: Path, text: str) -> int:
    """0 if ``path`` holds ``text``; else 1 with the difference on stderr."""
    try:
        current = path.read_text(encoding="utf-8")
    except OSError as e:
        print(f"{path}: cannot read: {e.strerror}; run `{REGENERATE}`", file=sys.stderr)
        return 1
    if current == text:
        return 0
    diff = list(
        difflib.unified_diff(
            current.splitlines(), text.splitlines(), str(path), "generated", lineterm=""
        )
    )
    print(f"{path} is stale; run `{REGENERATE}`", file=sys.stderr)
    print("\n".join(diff[:60]), file=sys.stderr)
    if len(diff) > 60:
        print(f"... ({len(diff) - 60} more diff lines)", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vdsm_api.docs",
        description="Print the Markdown API reference generated from the schema.",
    )
    parser.add_argument(
        "--check",
        nargs="?",
        const=DOCS_FILE,
        type=Path,
        metavar="FILE",
        help=f"exit 1 if FILE (default {DOCS_FILE}) differs from what would be generated",
    )
    args = parser.parse_args(argv)
    text = generate(api_schema.load())
    if args.check is not None:
        return check(args.check, text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
