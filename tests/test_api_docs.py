"""docs/api.md is generated from the schema and must be current (no Makefile needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vdsm_api import docs, schema

REPO = Path(__file__).resolve().parents[1]
API_MD = REPO / "docs" / "api.md"


def test_docs_api_md_is_current() -> None:
    assert API_MD.exists(), f"docs/api.md is missing: run `{docs.REGENERATE}`"
    current = API_MD.read_text(encoding="utf-8")
    assert current == docs.generate(schema.load()), f"docs/api.md is stale: run `{docs.REGENERATE}`"


def test_check_mode(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "vdsm_api.docs", "--check"]
    fresh = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert fresh.returncode == 0, fresh.stderr

    stale = tmp_path / "api.md"
    stale.write_text(API_MD.read_text(encoding="utf-8").replace("Volume.create", "Volume.make"))
    proc = subprocess.run(
        [*command, str(stale)], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 1
    assert "is stale" in proc.stderr and docs.REGENERATE in proc.stderr
    assert "-### Volume.make" in proc.stderr and "+### Volume.create" in proc.stderr

    missing = subprocess.run(
        [*command, str(tmp_path / "nope.md")], cwd=REPO, capture_output=True, text=True
    )
    assert missing.returncode == 1


def test_stdout_is_the_document() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vdsm_api.docs"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == docs.generate(schema.load())


def test_every_error_code_of_the_schema_is_declared_in_vdsm_errors() -> None:
    known = docs.error_table()
    for verb in schema.load().verbs:
        unknown = [code for code in verb.errors if code not in known]
        assert not unknown, f"{verb.title} lists codes missing from vdsm/errors.py: {unknown}"


@pytest.mark.parametrize("verb", schema.load().verbs, ids=lambda v: v.title)
def test_every_verb_is_documented(verb: schema.Verb) -> None:
    text = docs.generate(schema.load())
    start = text.index(f"\n### {verb.title}\n")
    section = text[start : text.index("\n### ", start + 1)]
    if verb.name:
        assert f"JSON-RPC: `{verb.name}`" in section
    if verb.xmlrpc:
        assert f"XML-RPC: `{verb.xmlrpc}`" in section
        order = ", ".join(f"`{p.name}`" for p in verb.xmlrpc_params) or "none"
        assert f"XML-RPC positional order: {order}." in section
    positions = [section.index(f"| `{p.name}` |") for p in verb.params]
    assert positions == sorted(positions)  # the JSON-RPC order
    for code in verb.errors:
        assert f"| {code} | {docs.error_table()[code][0]} |" in section
    if verb.xmlrpc_key:
        assert f"envelope key: `{verb.xmlrpc_key}`" in section


def test_enums_with_their_aliases() -> None:
    text = docs.generate(schema.load())
    enums = text[text.index("## Enums") :]
    assert "### VolumeFormat" in enums
    assert "| `COW` | `4` |" in enums and "| `RAW` | `5` |" in enums
    assert "| `ISOF` | — |" in enums


def test_error_codes_table() -> None:
    text = docs.generate(schema.load())
    table = text[text.index("## Error codes") :]
    assert "| 201 | VolumeDoesNotExist | Volume does not exist |" in table
    assert "| 100 | GeneralException | General exception |" in table
    assert "| 1000 | InvalidParameterException | Invalid parameter |" in table


def test_legacy_only_parameters_are_documented() -> None:
    text = docs.generate(schema.load())
    section = text[text.index("### StoragePool.create") : text.index("### StoragePool.getInfo")]
    assert "Legacy-only parameters (XML-RPC):" in section
    assert "| `poolType` | int | `0` |" in section
