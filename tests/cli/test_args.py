"""vdsClient's command line: options, addresses, and each argument string → its wire value."""

from __future__ import annotations

import pytest

from vdsm_api import schema
from vdsm_api.schema import Param, ParamType, StructType
from vdsm_api.wire import BLANK_UUID
from vdsm_cli import args
from vdsm_cli.client import DEFAULT_PORT, parse_address
from vdsm_cli.errors import UsageError
from vdsm_cli.vdsclient import parse_command_line

UUID = "8f2c1ad4-3b47-4a63-9f0e-2f6c9d1b7e55"

DRIVE = ParamType(
    "struct",
    struct=StructType(
        "DriveSpecVolume",
        "a drive",
        {name: ParamType("uuid") for name in ("domainID", "poolID", "imageID", "volumeID")},
    ),
)


def verb(name: str) -> schema.Verb:
    return schema.load().by_xmlrpc[name]


def enum_type(name: str) -> ParamType:
    return ParamType("enum", enum=schema.load().enums[name])


# --- scalar types ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [("5", 5), (" 42 ", 42), ("-3", -3), ("0", 0)])
def test_int(text: str, expected: object) -> None:
    assert args.convert_value(ParamType("int"), text) == expected


def test_big_integers_travel_as_strings() -> None:
    # XML-RPC integers are 32-bit; the daemon accepts decimal strings where it takes integers.
    number = Param("n", "n", ParamType("int"), "")
    assert args.convert_arg(number, "4294967296") == "4294967296"
    assert args.convert_arg(number, str(2**31 - 1)) == 2**31 - 1
    mapping = Param("m", "m", ParamType("dict"), "")
    assert args.convert_arg(mapping, '{"a": [1, 8589934592], "b": true, "c": null}') == {
        "a": [1, "8589934592"],
        "b": True,
        "c": None,
    }


@pytest.mark.parametrize("text", ["abc", "1.5", "", "--1", "1-2", "0x10"])
def test_int_refused(text: str) -> None:
    with pytest.raises(ValueError, match="integer"):
        args.convert_value(ParamType("int"), text)


@pytest.mark.parametrize(
    "text, expected", [("true", True), ("FALSE", False), (" True ", True), ("false", False)]
)
def test_bool(text: str, expected: bool) -> None:
    assert args.convert_value(ParamType("bool"), text) is expected


@pytest.mark.parametrize("text", ["yes", "1", "", "t"])
def test_bool_refused(text: str) -> None:
    with pytest.raises(ValueError, match="true or false"):
        args.convert_value(ParamType("bool"), text)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1073741824", "1073741824"),  # stays a string: XML-RPC ints are 32-bit
        ("10737418240", "10737418240"),
        ("1G", "1073741824"),
        ("1GiB", "1073741824"),
        ("512k", "524288"),
        ("3M", "3145728"),
        ("2T", str(2 * 1024**4)),
        ("lots", "lots"),  # the daemon judges (1000), not the client
    ],
)
def test_size(text: str, expected: str) -> None:
    assert args.convert_value(ParamType("size"), text) == expected


@pytest.mark.parametrize("kind", ["uuid", "uuid_or_blank", "string"])
def test_strings_are_sent_as_given(kind: str) -> None:
    # Not a UUID: still sent, so the daemon answers 1000 like it would to any client.
    for text in (UUID, BLANK_UUID, "not-a-uuid", "", "a b"):
        assert args.convert_value(ParamType(kind), text) == text


@pytest.mark.parametrize(
    "text, expected", [("null", None), ("12", 12), ('{"a": 1}', {"a": 1}), ("abc", "abc")]
)
def test_any_is_json_when_it_parses(text: str, expected: object) -> None:
    assert args.convert_value(ParamType("any"), text) == expected


# --- enums ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "enum, text, expected",
    [
        ("VolumeFormat", "COW", "COW"),
        ("VolumeFormat", "4", 4),
        ("VolumeFormat", "5", 5),
        ("Preallocation", "SPARSE", "SPARSE"),
        ("Preallocation", "2", 2),
        ("StorageDomainType", "4", 4),
        ("StorageDomainType", "LOCALFS", "LOCALFS"),
        ("StorageDomainClass", "Data", "Data"),
        ("VolumeFormat", "QCOW3", "QCOW3"),  # unknown: sent as given, the daemon answers 1000
    ],
)
def test_enum_sent_as_given(enum: str, text: str, expected: object) -> None:
    assert args.convert_value(enum_type(enum), text) == expected


# --- lists ----------------------------------------------------------------------------------

UUIDS = ParamType("list", item=ParamType("uuid"))


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"{UUID},{BLANK_UUID}", [UUID, BLANK_UUID]),
        (f" {UUID} , {BLANK_UUID} ", [UUID, BLANK_UUID]),
        (UUID, [UUID]),
        ("", []),
        (f'["{UUID}", "{BLANK_UUID}"]', [UUID, BLANK_UUID]),
        ("[]", []),
    ],
)
def test_list(text: str, expected: list[str]) -> None:
    assert args.convert_value(UUIDS, text) == expected


def test_list_items_are_converted_per_item_type() -> None:
    ints = ParamType("list", item=ParamType("int"))
    assert args.convert_value(ints, "1,2,3") == [1, 2, 3]
    assert args.convert_value(ints, "[1, 2]") == [1, 2]
    with pytest.raises(ValueError, match="integer"):
        args.convert_value(ints, "1,x")


@pytest.mark.parametrize("text", ["[bad", '["a",', "[1, 2"])
def test_list_bad_json(text: str) -> None:
    with pytest.raises(ValueError, match="JSON array"):
        args.convert_value(UUIDS, text)


# --- mappings -------------------------------------------------------------------------------


def test_struct_from_json() -> None:
    text = f'{{"domainID": "{UUID}", "poolID": "{UUID}", "imageID": "{UUID}", "volumeID": "x"}}'
    assert args.convert_value(DRIVE, text) == {
        "domainID": UUID,
        "poolID": UUID,
        "imageID": UUID,
        "volumeID": "x",
    }


def test_struct_from_key_values() -> None:
    text = f"domainID={UUID}, poolID={UUID},imageID={UUID},volumeID={BLANK_UUID}"
    assert args.convert_value(DRIVE, text) == {
        "domainID": UUID,
        "poolID": UUID,
        "imageID": UUID,
        "volumeID": BLANK_UUID,
    }


def test_dict_values_may_hold_equal_signs() -> None:
    assert args.convert_value(ParamType("dict"), "a=b=c,d=") == {"a": "b=c", "d": ""}


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"domainID": ', "JSON object"),
        ("{bad json}", "JSON object"),
        ("[1, 2]", "DriveSpecVolume"),
        ("domainID", "key=value"),
        ("=x", "key=value"),
        ("", "key=value"),
    ],
)
def test_struct_refused(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        args.convert_value(DRIVE, text)


# --- whole verbs ----------------------------------------------------------------------------


def test_create_volume_in_legacy_order() -> None:
    wire = args.convert_args(
        verb("createVolume"),
        [UUID, UUID, UUID, "1G", "COW", "2", "DATA", UUID, "snap", UUID, UUID],
    )
    assert wire == [UUID, UUID, UUID, "1073741824", "COW", 2, "DATA", UUID, "snap", UUID, UUID]


def test_create_storage_domain_numeric_enums() -> None:
    wire = args.convert_args(verb("createStorageDomain"), ["4", UUID, "name", "/srv/sd", "1"])
    assert wire == [4, UUID, "name", "/srv/sd", 1]


def test_optional_tail_may_be_left_out() -> None:
    assert args.convert_args(verb("getVolumesList"), [UUID, UUID]) == [UUID, UUID]
    assert args.convert_args(verb("getVolumesList"), [UUID, UUID, UUID]) == [UUID, UUID, UUID]


def test_min_args_counts_optionals_before_a_required_one() -> None:
    # diskType (default DATA) comes before the required volumeID.
    assert args.min_args(verb("createVolume")) == 8
    # poolType (default 0) comes before the required storagepoolID.
    assert args.min_args(verb("createStoragePool")) == 4
    assert args.min_args(verb("getAllTasksStatuses")) == 0


@pytest.mark.parametrize(
    "name, count, match",
    [
        ("getVolumeInfo", 3, "takes 4 arguments, 3 given"),
        ("getVolumeInfo", 5, "takes 4 arguments, 5 given"),
        ("createVolume", 7, "at least 8 arguments, 7 given"),
        ("createVolume", 12, "at most 11 arguments, 12 given"),
        ("getTaskStatus", 0, "takes 1 argument, 0 given"),
        ("ping", 1, "takes 0 arguments, 1 given"),
    ],
)
def test_wrong_count_is_a_usage_error_with_the_usage_line(
    name: str, count: int, match: str
) -> None:
    with pytest.raises(UsageError, match=match) as info:
        args.convert_args(verb(name), [UUID] * count)
    assert info.value.usage == args.usage_line(verb(name))


def test_type_error_names_the_parameter_and_shows_usage() -> None:
    with pytest.raises(UsageError, match=r"^masterVersion: expected an integer") as info:
        args.convert_args(verb("createStoragePool"), ["0", UUID, "pool", UUID, UUID, "one"])
    assert info.value.usage.startswith("createStoragePool <poolType> <storagepoolID>")
    with pytest.raises(UsageError, match=r"^postZero: expected true or false"):
        args.convert_args(verb("deleteImage"), [UUID, UUID, UUID, "maybe"])


def test_usage_line_in_legacy_order() -> None:
    assert args.usage_line(verb("createVolume")) == (
        "createVolume <storagedomainID> <storagepoolID> <imageID> <size> <volFormat> "
        "<preallocate> <diskType> <volumeID> [<desc> [<srcImgUUID> [<srcVolUUID>]]]"
    )
    assert args.usage_line(verb("getVolumesList")) == (
        "getVolumesList <storagedomainID> <storagepoolID> [<imageID>]"
    )
    assert args.usage_line(verb("ping")) == "ping"


@pytest.mark.parametrize("name", sorted(schema.load().by_xmlrpc))
def test_every_verb_has_a_usage_line_naming_its_parameters(name: str) -> None:
    line = args.usage_line(verb(name))
    positions = [line.index(f"<{p.name}>") for p in verb(name).xmlrpc_params]
    assert positions == sorted(positions)


# --- options and addresses ------------------------------------------------------------------


def test_options_before_and_after_the_verb() -> None:
    cmd = parse_command_line(
        ["-s", "--flow-id", "f1", "host:1", "getVolumeInfo", "--json", "a", "b", "c", "d"]
    )
    assert cmd.tls and cmd.json and cmd.flow_id == "f1"
    assert cmd.positionals == ["host:1", "getVolumeInfo", "a", "b", "c", "d"]


def test_option_with_equal_sign_and_double_dash() -> None:
    cmd = parse_command_line(["--ca=/x", "h", "v", "--", "--json", "-s"])
    assert cmd.ca == "/x" and not cmd.json and not cmd.tls
    assert cmd.positionals == ["h", "v", "--json", "-s"]


def test_unknown_option_before_the_verb() -> None:
    with pytest.raises(UsageError, match="unknown option --bogus"):
        parse_command_line(["--bogus", "h", "v"])


def test_unknown_option_after_the_verb_is_an_argument() -> None:
    cmd = parse_command_line(["h", "waitTask", "t", "--timeout", "5"])
    assert cmd.positionals == ["h", "waitTask", "t", "--timeout", "5"]


def test_option_without_value() -> None:
    with pytest.raises(UsageError, match="--flow-id needs a value"):
        parse_command_line(["h", "v", "--flow-id"])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("host", ("host", DEFAULT_PORT)),
        ("host:1234", ("host", 1234)),
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]", ("::1", DEFAULT_PORT)),
        ("[::1]:99", ("::1", 99)),
        ("::1", ("::1", DEFAULT_PORT)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["host:", "host:x", "host:70000", ":80", "[::1", "[::1]x"])
def test_parse_address_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)
