"""vdsClient's help texts, generated from the API schema (vdsm-api.yml) and vdsm.errors.

``main_help`` lists every legacy verb with its summary, grouped by the JSON-RPC namespace it
belongs to; ``verb_help`` shows one verb's usage line, each positional parameter with its type,
default and description, what it returns and the error codes it may answer with.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable

from vdsm_api.docs import COMMON_ERRORS, grouped
from vdsm_api.pki import DEFAULT_PKI_DIR
from vdsm_api.schema import Param, Schema, Verb
from vdsm_cli.args import usage_line
from vdsm_cli.client import DEFAULT_PORT
from vdsm_cli.errors import error_name, error_title

PROG = "vdsClient"
USAGE = (
    f"usage: {PROG} [--no-tls] [--pki-dir DIR] [--cert FILE --key FILE] [--ca FILE]\n"
    "                 [--json] [--flow-id ID] HOST[:PORT] VERB [ARGS...]\n"
    f"       {PROG} help [VERB]"
)

OPTIONS = f"""\
options:
  -h, --help        show this help; `{PROG} help VERB` or `VERB --help` for one verb
  (TLS)             by default vdsClient talks TLS, verifies vdsmd's certificate with the
                    host's CA and presents the admin client certificate, all from --pki-dir
                    (readable by root only: vdsmd serves only callers with a certificate)
  --pki-dir DIR     the PKI `vdsm-tool configure` made (default {DEFAULT_PKI_DIR})
  --ca FILE         CA certificate(s) to verify the server with (default: PKI_DIR's CA)
  --cert FILE       client certificate to present (default: PKI_DIR's admin certificate)
  --key FILE        the client certificate's private key
  --no-tls          plain HTTP, for a vdsmd explicitly run without TLS (loopback only)
  -s, --tls         accepted for VDSM's scripts: TLS is the default
  --json            print the answer as one JSON object (waitTask: one JSON object a line)
  --flow-id ID      the flow id sent with every request (default: a new one per run)

HOST[:PORT]         the vdsmd to talk to (default port {DEFAULT_PORT}); [IPv6]:PORT for IPv6

ARGS are the verb's positional arguments, in VDSM's legacy XML-RPC order: integers and enums
as numbers or names (COW or 4), booleans as true/false, lists as JSON or a,b,c, mappings as
JSON or key=value,key=value (values are then strings: use JSON for numbers, nested values and
lists of mappings), sizes in bytes (or with a K, M, G or T suffix).

exit codes: 0 success, 1 vdsmd answered an error (or waitTask: the task failed),
            2 usage error, 3 connection or protocol error, 130 interrupted (Ctrl-C)
"""

# Commands of vdsClient itself (not schema verbs): name → summary.
FRIENDLY = {
    "waitTask": "Wait for a task to finish, showing its progress; exit 0 if it succeeded.",
    "moveDisk": "Move a running VM's disk to another storage domain, live, in one command "
    "(journaled: --resume after any interruption; the SPM and the VM may be on different "
    "hosts: --hosts).",
}

WAIT_TASK_HELP = """\
usage: vdsClient HOST[:PORT] waitTask TASKID [--timeout SECONDS] [--interval SECONDS]

  Wait for a task to finish, polling getTaskStatus, and show its progress: on a terminal a
  live bar (percent, bytes done/total, rate in MiB/s, ETA); otherwise a line whenever the
  status changes (at most one every few seconds); with --json one taskStatus object a line.
  Not a schema verb: a vdsClient command built on getTaskStatus.

arguments:
  TASKID              the task (uuid), as createVolume, syncImageData, ... printed it
  --timeout SECONDS   give up after this long (exit 1; the task keeps running)
  --interval SECONDS  seconds between polls (default 0.5)

exit codes: 0 the task finished with result success; 1 it failed (its code and message are
printed), it is unknown (401) or the timeout passed; 130 on Ctrl-C, which only stops waiting:
the task keeps running (stop it with stopTask TASKID).
"""


def main_help(schema: Schema) -> str:
    groups = grouped(schema, (verb for verb in schema.verbs if verb.xmlrpc))
    width = max(
        [len(str(v.xmlrpc)) for vs in groups.values() for v in vs] + [len(n) for n in FRIENDLY]
    )
    lines = [USAGE, "", "Talk to vdsmd over XML-RPC with VDSM's legacy verbs.", "", OPTIONS]
    lines.append("verbs (from the API schema):")
    for group in groups:
        lines.append(f"  {group}:")
        for verb in groups[group]:
            lines.extend(_entry(str(verb.xmlrpc), verb.summary, width))
    lines.append("  vdsClient commands (not in the schema):")
    for name, summary in FRIENDLY.items():
        lines.extend(_entry(name, summary, width))
    lines.append("")
    lines.append(f"`{PROG} help VERB` shows a verb's arguments, result and error codes.")
    return "\n".join(lines) + "\n"


def _entry(name: str, summary: str, width: int) -> list[str]:
    first = f"    {name.ljust(width)}  "
    wrapped = textwrap.wrap(summary, width=max(40, 100 - len(first))) or [""]
    return [first + wrapped[0], *(" " * len(first) + rest for rest in wrapped[1:])]


def verb_help(verb: Verb) -> str:
    lines = [f"usage: {PROG} HOST[:PORT] {usage_line(verb)}", ""]
    lines.extend("  " + line for line in textwrap.wrap(verb.summary, 96))
    if verb.name:
        lines.append(f"  JSON-RPC: {verb.name}")
    if verb.spm:
        lines.append("  Runs on the pool's SPM only (else error 654).")
    lines.append("")
    if verb.xmlrpc_params:
        lines.append("arguments, in this order:")
        width = max(len(p.name) for p in verb.xmlrpc_params)
        for param in verb.xmlrpc_params:
            lines.extend(_param_lines(param, width))
    else:
        lines.append("arguments: none")
    lines.append("")
    lines.append(f"returns: {verb.returns or 'nothing'}")
    if verb.xmlrpc_key:
        lines.append(f"  (printed; --json: under {verb.xmlrpc_key!r})")
    elif verb.xmlrpc_merge:
        lines.append("  (printed; --json: the keys at the top level)")
    else:
        lines.append("  (nothing is printed; --json: {})")
    lines.append("")
    lines.append("errors:")
    lines.extend(_error_lines(verb.errors))
    lines.append("  and, like every verb:")
    lines.extend(_error_lines(COMMON_ERRORS))
    return "\n".join(lines) + "\n"


def _param_lines(param: Param, width: int) -> list[str]:
    ptype = param.type
    kind = ptype.describe()
    if ptype.enum is not None:
        values = ", ".join(ptype.enum.values)
        aliases = ", ".join(f"{k}={v}" for k, v in ptype.enum.aliases.items())
        kind += f" ({values}" + (f"; or {aliases}" if aliases else "") + ")"
    elif ptype.struct is not None:
        kind += " {" + ", ".join(ptype.struct.fields) + "}"
    head = f"  {param.name.ljust(width)}  {kind}"
    head += ", required" if param.required else f", default {_show_default(param.default)}"
    out = [head]
    if param.description:
        pad = " " * (width + 6)
        out.extend(textwrap.wrap(param.description, 100, initial_indent=pad, subsequent_indent=pad))
    return out


def _show_default(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if value == "":
        return '""'
    return str(value)


def _error_lines(codes: Iterable[int]) -> list[str]:
    lines = []
    for code in codes:
        title = error_title(code)
        lines.append(f"  {code:>5}  {error_name(code)}" + (f": {title}" if title else ""))
    return lines
