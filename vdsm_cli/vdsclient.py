"""vdsClient: call vdsmd's legacy verbs from the command line, driven by the API schema.

    vdsClient [--no-tls] [--pki-dir D] [--cert F --key F] [--ca F] [--json] [--flow-id ID]
              HOST[:PORT] VERB ARGS...

Every XML-RPC verb of vdsm-api.yml is a command; its ARGS are the verb's positional arguments
in the legacy order, converted per parameter type (:mod:`vdsm_cli.args`). ``help VERB`` and
``VERB --help`` are generated from the schema (:mod:`vdsm_cli.help`). Two friendly commands:
``waitTask``, on top of getTaskStatus (:meth:`vdsm_cli.api.Vdsm.wait_task`, shown by
:mod:`vdsm_cli.progress`), and ``moveDisk`` (:mod:`vdsm_cli.move.command`).

This module parses the command line, runs the command and turns each error into one line on
stderr and its exit code (:mod:`vdsm_cli.errors`): 0 success, 1 an API error, 2 a usage error,
3 a connection or protocol error, 130 Ctrl-C. Never a traceback.
"""

from __future__ import annotations

import difflib
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from vdsm_api import schema as api_schema
from vdsm_api.pki import PkiLayout
from vdsm_api.schema import Schema, Verb
from vdsm_cli import args as cli_args
from vdsm_cli import help as cli_help
from vdsm_cli import output, progress
from vdsm_cli.api import SUCCESS, Vdsm
from vdsm_cli.client import Client, Endpoint, parse_address
from vdsm_cli.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    ApiError,
    CliError,
    ConnectionFailed,
    UsageError,
)
from vdsm_cli.move import command as move_command

PROG = cli_help.PROG
WAIT_TASK = "waitTask"
# -s/--tls are VDSM's flags; TLS is the default now, so they only say so.
_FLAGS = {
    "-s": "tls",
    "--tls": "tls",
    "--no-tls": "no_tls",
    "--json": "json",
    "-h": "help",
    "--help": "help",
}
_OPTIONS = {
    "--flow-id": "flow_id",
    "--cert": "cert",
    "--key": "key",
    "--ca": "ca",
    "--pki-dir": "pki_dir",
}


class Interrupted(CliError):
    exit_code = EXIT_INTERRUPTED


@dataclass
class Command:
    """What the command line asks for."""

    tls: bool = False  # -s given (TLS is the default anyway)
    no_tls: bool = False
    json: bool = False
    help: bool = False
    flow_id: str | None = None
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    pki_dir: str | None = None
    positionals: list[str] = field(default_factory=list)  # HOST, VERB, ARGS...


def parse_command_line(argv: list[str]) -> Command:
    """Options may come anywhere before ``--``; everything else is HOST, VERB and ARGS."""
    cmd = Command()
    tokens = iter(argv)
    for token in tokens:
        if token == "--":
            cmd.positionals.extend(tokens)
            break
        name, sep, inline = token.partition("=")
        if token in _FLAGS:
            setattr(cmd, _FLAGS[token], True)
        elif name in _OPTIONS:
            value = inline if sep else next(tokens, None)
            if value is None or (not sep and value.startswith("--")):
                raise UsageError(f"option {name} needs a value")
            setattr(cmd, _OPTIONS[name], value)
        elif token.startswith("--") and len(cmd.positionals) < 2:
            raise UsageError(f"unknown option {token}")
        else:
            cmd.positionals.append(token)
    return cmd


def endpoint(cmd: Command, address: str) -> Endpoint:
    """Where to connect and how: TLS with this host's CA and admin certificate unless the
    command line names other files, or plain HTTP with --no-tls."""
    try:
        host, port = parse_address(address)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if cmd.no_tls:
        given = [
            f"--{o.replace('_', '-')}" for o in ("cert", "key", "ca", "pki_dir") if getattr(cmd, o)
        ]
        if cmd.tls or given:
            raise UsageError(f"--no-tls conflicts with {(given or ['-s'])[0]}")
        return Endpoint(host, port, tls=False)
    if cmd.key and not cmd.cert:
        raise UsageError("--key needs --cert")
    for option in ("cert", "key", "ca", "pki_dir"):
        value = getattr(cmd, option)
        if value and not Path(value).exists():
            raise UsageError(f"--{option.replace('_', '-')} {value}: no such file")
    layout = PkiLayout(Path(cmd.pki_dir)) if cmd.pki_dir else PkiLayout()
    ca = Path(cmd.ca) if cmd.ca else layout.ca_cert
    if not ca.is_file():
        raise ConnectionFailed(
            f"no CA certificate at {ca} to verify vdsmd with: run `vdsm-tool configure` on "
            "this host, or give --ca (or --no-tls for a plain-HTTP vdsmd)"
        )
    if cmd.cert:
        cert, key = Path(cmd.cert), Path(cmd.key) if cmd.key else None
    else:
        cert, key = layout.admin_cert, layout.admin_key
    return Endpoint(host, port, True, cert, key, ca)


def find_verb(schema: Schema, name: str) -> Verb:
    verb = schema.by_xmlrpc.get(name)
    if verb is None:
        known = [*schema.by_xmlrpc, WAIT_TASK, move_command.COMMAND]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise UsageError(f"unknown verb {name!r}{hint} (`{PROG} --help` lists them)")
    return verb


def run(argv: list[str], out: TextIO, err: TextIO) -> int:
    schema = api_schema.load()
    cmd = parse_command_line(argv)
    words = cmd.positionals
    if words[:1] == ["help"]:
        if len(words) > 2:
            raise UsageError("help takes at most one VERB")
        out.write(_help_text(schema, words[1] if len(words) == 2 else None))
        return EXIT_OK
    if cmd.help:
        # `VERB --help`, `HOST VERB --help`, or just --help.
        verb_name = words[1] if len(words) >= 2 else None
        if len(words) == 1 and (
            words[0] in schema.by_xmlrpc or words[0] in (WAIT_TASK, move_command.COMMAND)
        ):
            verb_name = words[0]
        out.write(_help_text(schema, verb_name))
        return EXIT_OK
    if len(words) < 2:
        raise UsageError("missing HOST and VERB" if not words else "missing VERB")
    address, verb_name, values = words[0], words[1], words[2:]
    target = endpoint(cmd, address)
    flow_id = cmd.flow_id or str(uuid.uuid4())
    if verb_name == WAIT_TASK:
        return wait_task(cmd, target, flow_id, values, out, err)
    if verb_name == move_command.COMMAND:
        return move_command.run(values, target, flow_id, cmd.json, out)
    verb = find_verb(schema, verb_name)
    wire_args = cli_args.convert_args(verb, values)
    try:
        envelope = Client(target, flow_id).call(str(verb.xmlrpc), wire_args)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; {verb.xmlrpc} may still complete on vdsmd (flow id {flow_id})"
        ) from None
    data = output.payload(envelope)
    text = output.to_json(data) if cmd.json else output.to_text(data)
    if text:
        out.write(text + "\n")
    return EXIT_OK


def _help_text(schema: Schema, verb_name: str | None) -> str:
    if verb_name is None:
        return cli_help.main_help(schema)
    if verb_name == WAIT_TASK:
        return cli_help.WAIT_TASK_HELP
    if verb_name == move_command.COMMAND:
        return move_command.HELP
    return cli_help.verb_help(find_verb(schema, verb_name))


def wait_task(
    cmd: Command, target: Endpoint, flow_id: str, values: list[str], out: TextIO, err: TextIO
) -> int:
    usage = "waitTask TASKID [--timeout SECONDS] [--interval SECONDS]"
    task_id: str | None = None
    numbers: dict[str, float | None] = {
        "--timeout": None,
        "--interval": progress.DEFAULT_INTERVAL,
    }
    tokens = iter(values)
    for token in tokens:
        name, sep, inline = token.partition("=")
        if name in numbers:
            text = inline if sep else next(tokens, "")
            try:
                number = float(text)
            except ValueError:
                raise UsageError(f"{name} needs a number of seconds", usage) from None
            if number <= 0:
                raise UsageError(f"{name} must be greater than zero", usage)
            numbers[name] = number
        elif task_id is None and not token.startswith("--"):
            task_id = token
        else:
            raise UsageError(f"unexpected argument {token!r}", usage)
    if task_id is None:
        raise UsageError("waitTask needs a TASKID", usage)
    api = Vdsm(Client(target, flow_id))
    display: progress.Display
    if cmd.json:
        display = progress.JsonLines(out)
    elif out.isatty():
        display = progress.LiveBar(out, task_id)
    else:
        display = progress.PlainLines(out, task_id)
    try:
        status = progress.watch(
            api,
            task_id,
            display,
            timeout=numbers["--timeout"],
            interval=numbers["--interval"] or progress.DEFAULT_INTERVAL,
        )
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped waiting; task {task_id} keeps running "
            f"(`{PROG} {target.host}:{target.port} stopTask {task_id}` stops it)"
        ) from None
    if status.get("taskResult") == SUCCESS:
        return EXIT_OK
    result = output.terminal_safe(str(status.get("taskResult") or "?"))
    message = str(status.get("message", ""))
    code = int(status.get("code") or 0)
    if code:
        err.write(f"{PROG}: task {task_id} ended with result {result}\n")
        raise ApiError(code, message)
    raise CliError(f"task {task_id} ended with result {result}: {message}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out, err = sys.stdout, sys.stderr
    try:
        return run(argv, out, err)
    except UsageError as e:
        err.write(f"{PROG}: {e.message}\n")
        if e.usage:
            err.write(f"usage: {PROG} HOST[:PORT] {e.usage}\n")
        else:
            err.write(f"{cli_help.USAGE}\n")
        return EXIT_USAGE
    except CliError as e:
        err.write(f"{PROG}: {e.message}\n")
        return e.exit_code
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `vdsClient ... | head`: the reader left; nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not fail again
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
