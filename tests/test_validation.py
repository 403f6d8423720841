"""vdsm.validation's checks of client values, and the schema's use of them, without a daemon."""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

import pytest

from vdsm import validation
from vdsm.errors import InvalidParameter
from vdsm.rpc import jsonrpc_binding, xmlrpc_binding
from vdsm_api import schema
from vdsm_api.wire import xmlrpc_safe

# --- integer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (0, 0),
        (-5, -5),
        ("512", 512),
        (" 42\n", 42),
        ("-7", -7),
        ("007", 7),
        ("9" * 18, int("9" * 18)),
    ],
)
def test_integer_accepts_ints_and_ascii_decimal_text(value: Any, expected: int) -> None:
    assert validation.integer(value, "n") == expected


@pytest.mark.parametrize(
    "value",
    ["²", "①", "٥١٢", "１２", "--5", "-", "", "+5", "5 5", "0x10", "1e3", "1_000", "5\n5", "1.0"],
)
def test_integer_refuses_anything_but_ascii_digits(value: str) -> None:
    with pytest.raises(InvalidParameter, match=r"^Invalid parameter: n=.*ASCII digits"):
        validation.integer(value, "n")


def test_integer_counts_digits_before_int_sees_them() -> None:
    # 4,301 digits would make int() raise ValueError; 10**6 would take it a while.
    for text in ("1" * 4301, "1" * 1_000_000, "-" + "1" * 21):
        with pytest.raises(InvalidParameter, match="more than 20 digits"):
            validation.integer(text, "n")


@pytest.mark.parametrize("value", [True, False, 1.0, None, b"1", Decimal(1), [1], {"a": 1}])
def test_integer_refuses_other_types(value: Any) -> None:
    with pytest.raises(InvalidParameter, match="expected an integer"):
        validation.integer(value, "n")


def test_integer_bounds() -> None:
    assert validation.integer("16", "memSize", low=16, high=1024) == 16
    with pytest.raises(InvalidParameter, match="at least 16"):
        validation.integer(15, "memSize", low=16, high=1024)
    with pytest.raises(InvalidParameter, match="at most 1024"):
        validation.integer("1025", "memSize", low=16, high=1024)
    # Default bounds: a signed 64-bit integer, whatever the source.
    with pytest.raises(InvalidParameter, match="at most"):
        validation.integer(str(2**63), "n")
    with pytest.raises(InvalidParameter, match=r"n='<integer of 4001 bits>'"):
        validation.integer(2**4000, "n")  # repr() of it would raise: shown by its size


# --- size_bytes ---------------------------------------------------------------------------


def test_size_bytes() -> None:
    assert validation.size_bytes("1073741824", "size") == 1024**3
    assert validation.size_bytes(512, "size") == 512
    assert validation.size_bytes(str(2**63 - 512), "size") == 2**63 - 512
    for bad, reason in [
        ("٥١٢", "ASCII digits"),  # was 512: a 512-byte volume
        ("²", "ASCII digits"),
        ("0", "greater than zero"),
        ("-512", "greater than zero"),
        ("513", "multiple of 512"),
        (str(2**63), "at most"),
        ("1" * 4301, "more than 20 digits"),
        (1.5, "expected a size"),
        (True, "expected a size"),
    ]:
        with pytest.raises(InvalidParameter, match=reason):
            validation.size_bytes(bad, "size")


# --- wire_value ---------------------------------------------------------------------------


def deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_wire_value_accepts_json_like_data() -> None:
    validation.wire_value({"a": [1, "x", None, True, 1.5, {"b": []}]}, "p")
    validation.wire_value(deep(validation.MAX_DEPTH), "p")
    validation.wire_value(list(range(validation.MAX_NODES - 1)), "p")
    validation.wire_value("x" * validation.MAX_STRING, "p")


@pytest.mark.parametrize(
    "value, where, reason",
    [
        (b"\x00", "p", "base64"),
        (datetime.datetime(2024, 1, 1), "p", "dateTime"),
        (Decimal("1.5"), "p", "bigdecimal"),
        ({"a": [0, {"b": b"x"}]}, r"p\.a\[1\]\.b", "base64"),
        ({"a": "\ud800"}, r"p\.a", "lone surrogate"),
        ({"\udfff": 1}, "p key", "lone surrogate"),
        ({1: 1}, "p", "keys must be strings"),
        ("a\x00b", "p", "NUL"),
        (float("nan"), "p", "finite"),
        (float("inf"), "p", "finite"),
        (2**63, "p", "64-bit"),
        (validation.RejectedNumber("٥"), "p", "ASCII digits"),
        ({"x": deep(validation.MAX_DEPTH)}, r"p\.x(\[0\])+", "deeper than 32"),
        (deep(100_000), r"p(\[0\])+", "deeper than 32"),
        (list(range(validation.MAX_NODES)), "p", "more than 10000 values"),
        ("x" * (validation.MAX_STRING + 1), "p", "longer than 65536"),
        ({"k" * 2000: 1}, "p key", "longer than 1024"),
        ({"a\x1bb": b""}, r"p\.a\\x1bb", "base64"),  # a client's key, escaped in the name
        (object(), "p", "type object"),
    ],
)
def test_wire_value_refuses_by_name(value: Any, where: str, reason: str) -> None:
    with pytest.raises(InvalidParameter, match=rf"^Invalid parameter: {where}=.*{reason}"):
        validation.wire_value(value, "p")


def test_wire_value_error_message_stays_short() -> None:
    with pytest.raises(InvalidParameter) as info:
        validation.wire_value([deep(5000)], "p")
    assert len(info.value.message) < 200


def test_count_values_stops_at_the_limit() -> None:
    assert validation.count_values([1, [2, 3], {"a": 4}], 100) == 7
    assert validation.count_values([0] * 1_000_000, 10) == 11


def test_shown_escapes_and_shortens() -> None:
    assert validation.shown("plain") == "plain"
    assert validation.shown("a\x1b[2J\x07\ud800") == "a\\x1b[2J\\x07\\ud800"
    assert validation.shown("x" * 1000, 20) == "x" * 17 + "..."
    assert validation.shown("\x1b" * 1000, 20) == "\\x1b" * 4 + "\\..."
    assert validation.shown(123) == "int"


# --- the schema's kinds -------------------------------------------------------------------

VERBS = schema.load()


def bind(verb: str, **params: Any) -> dict[str, Any]:
    return VERBS.by_name[verb].bind_named(params)


SP, SD = "0d4f8a51-6bd5-4c5e-93a2-3c7e9cb1e0aa", "1d4f8a51-6bd5-4c5e-93a2-3c7e9cb1e0aa"


def bind_pool(pool_type: Any) -> dict[str, Any]:
    return VERBS.by_xmlrpc["createStoragePool"].bind_positional([pool_type, SP, "p", SD, [], 1])


@pytest.mark.parametrize("bad", ["²", "①", "--5", "٥", "1" * 4301, 1.0, b"1"])
def test_int_kind_uses_integer(bad: Any) -> None:
    assert bind_pool("-3")["pool_type"] == -3
    assert bind_pool(None)["pool_type"] == 0  # absent: the default
    with pytest.raises(InvalidParameter, match="poolType"):
        bind_pool(bad)


def test_dict_and_any_kinds_hold_only_json_like_values() -> None:
    vm = {"vmId": "0d4f8a51-6bd5-4c5e-93a2-3c7e9cb1e0aa", "devices": [{"path": b"/etc"}]}
    with pytest.raises(InvalidParameter, match=r"vmParams\.devices\[0\]\.path"):
        bind("VM.create", vmParams=vm)
    with pytest.raises(InvalidParameter, match="snapMemory"):
        bind("VM.snapshot", vmID=vm["vmId"], snapDrives=[], snapMemory=datetime.datetime.now())


def test_string_kind_is_bounded() -> None:
    args = {"storagedomainID": SD, "domainType": "LOCALFS", "name": "n"}
    with pytest.raises(InvalidParameter, match="typeArgs.*longer than 65536"):
        bind("StorageDomain.create", typeArgs="/" + "a" * 70_000, **args)


def test_unknown_parameter_name_is_escaped_and_short() -> None:
    with pytest.raises(InvalidParameter) as info:
        bind("Host.ping", **{"\x1b]0;pwned\x07" + "x" * 10_000: 1})
    assert info.value.message.isprintable() and len(info.value.message) < 120


# --- the decoders -------------------------------------------------------------------------


def test_json_decoder_keeps_huge_integers_unconverted() -> None:
    doc = jsonrpc_binding.parse(b'{"a": ' + b"7" * 5000 + b', "b": -12, "c": 1.5}')
    assert isinstance(doc["a"], validation.RejectedNumber) and doc["b"] == -12
    with pytest.raises(ValueError, match="NaN is not JSON"):
        jsonrpc_binding.parse(b"[NaN]")


def call(element: str) -> bytes:
    """An XML-RPC call of method ``m`` with one parameter, the value ``element``."""
    params = f"<params><param><value>{element}</value></param></params>"
    return f"<methodCall><methodName>m</methodName>{params}</methodCall>".encode()


@pytest.mark.parametrize(
    "element, expected",
    [("<int>42</int>", 42), ("<i4>-7</i4>", -7), ("<i8>+5</i8>", 5), ("<double>1.5</double>", 1.5)],
)
def test_xmlrpc_decoder_reads_ascii_numbers(element: str, expected: Any) -> None:
    assert xmlrpc_binding.parse(call(element)) == ((expected,), "m")


@pytest.mark.parametrize(
    "element",
    ["<int>٥١٢</int>", "<int>²</int>", "<int>" + "1" * 4301 + "</int>", "<double>١.٥</double>",
     "<double>nan</double>", "<i4>1_000</i4>"],
)  # fmt: skip
def test_xmlrpc_decoder_keeps_other_numbers_unconverted(element: str) -> None:
    (value,), _ = xmlrpc_binding.parse(call(element))
    assert isinstance(value, validation.RejectedNumber)


def test_xmlrpc_answers_carry_only_characters_xml_can() -> None:
    assert xmlrpc_safe({"k\x1b": ["a\x07b", "\ud800", "tab\tnl\n"]}) == {
        "k\\x1b": ["a\\x07b", "\\ud800", "tab\tnl\n"]
    }
