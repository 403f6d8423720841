"""Calls an API method for a schema verb and logs every call with its flow id and duration.

One line per call at INFO, when it finishes (verb, flow id, code, duration); its start, with
the arguments, at DEBUG: two INFO lines per call doubled the log of a busy host for no news.
Everything a client chose (flow id, arguments, error messages quoting them) is logged escaped,
so a newline or a terminal escape in a value cannot forge or hide a log line.

The dispatcher resolves each verb's ``call`` (``<namespace>.<method>``) once, at start-up, so
a schema naming a method the API lacks fails the daemon's start, not a caller's request.
Errors pass through as vdsm.errors types; an unexpected exception becomes GeneralException
(100) with a message naming it, and its traceback goes to the log.

A verb that only reads domain storage (``storage_read`` in the schema: getVolumesList,
getStorageDomainInfo, ...) runs in a thread of its own, and its caller waits at most
``storage_read_timeout`` seconds. Every verb meets a probe of the domain before it touches it
when the domain's last answer is older than a second (vdsm/storage/domain_health.py), so a
hung domain is refused with 379 within one probe timeout; the bound is for the verb that began
within that second of the hang: it blocks in the kernel (no signal reaches it), and past the
bound its caller gets 379 while the thread is left to finish whenever the storage answers; it
changes nothing, so nothing is half-done. Verbs that change storage are not bounded this way:
answering an error while the change may still happen would be a lie.

Every call of a known verb, answered or refused (its arguments not matching the schema
included), is reported once to the optional ``on_call`` hook with the verb, the code and the
seconds it took: vdsm/observe/ counts them for /metrics. vdsmd's own read-only views (the web
page, /metrics) call verbs through :meth:`Dispatcher.read`: the same methods and the same
bound on storage reads, but neither logged at INFO nor counted, since no client called them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from vdsm.errors import StorageDomainAccessError, VdsmError
from vdsm.validation import shown
from vdsm_api.schema import Schema, Verb

log = logging.getLogger("vdsm.api")

# Characters of arguments, flow ids and error messages a log line quotes at most.
BRIEF_LENGTH = 500
# Seconds a storage-reading verb may take by default (vdsmd passes its domain probe timeout).
STORAGE_READ_TIMEOUT = 10.0


# What the dispatcher tells of each call of a known verb: its title, code (0: success) and
# the seconds it took.
CallHook = Callable[[str, int, float], None]


class Dispatcher:
    def __init__(
        self,
        schema: Schema,
        namespaces: Mapping[str, object],
        storage_read_timeout: float = STORAGE_READ_TIMEOUT,
        on_call: CallHook | None = None,
    ) -> None:
        self.schema = schema
        self.storage_read_timeout = storage_read_timeout
        self._on_call = on_call
        self._by_title = {verb.title: verb for verb in schema.verbs}
        self._methods: dict[str, Callable[..., Any]] = {}
        for verb in schema.verbs:
            namespace, _, method = verb.call.partition(".")
            target = getattr(namespaces.get(namespace), method, None)
            if not callable(target):
                raise RuntimeError(f"schema verb {verb.title} calls missing API {verb.call}")
            self._methods[verb.call] = target

    def call(self, verb: Verb, bind: Callable[[], dict[str, Any]], flow_id: str | None) -> Any:
        """Check the client's arguments (``bind``: the binding's check against the schema,
        raising 1000), run the verb's API method; log start and finish, report the call."""
        started = time.monotonic()
        flow = _safe(flow_id)
        try:
            kwargs = bind()
        except VdsmError as e:
            self._report(verb, e.code, started)
            raise
        log.debug("START %s flow_id=%s args=%s", verb.title, flow, _brief(kwargs))
        try:
            result = self._run(verb, kwargs)
        except VdsmError as e:
            log.info(
                "FINISH %s flow_id=%s code=%d duration=%.3fs: %s",
                verb.title,
                flow,
                e.code,
                time.monotonic() - started,
                shown(e.message, BRIEF_LENGTH),
            )
            self._report(verb, e.code, started)
            raise
        log.info(
            "FINISH %s flow_id=%s code=0 duration=%.3fs",
            verb.title,
            flow,
            time.monotonic() - started,
        )
        self._report(verb, 0, started)
        return result

    def read(self, title: str, **kwargs: Any) -> Any:
        """vdsmd's own call of a verb that only reads (the web page's, /metrics'): as a
        client's call would run, bounded alike, not logged at INFO nor counted."""
        verb = self._by_title[title]
        return self._run(verb, kwargs)

    def _run(self, verb: Verb, kwargs: dict[str, Any]) -> Any:
        try:
            method = self._methods[verb.call]
            if verb.storage_read:
                return self._bounded(verb, method, kwargs)
            return method(**kwargs)
        except VdsmError:
            raise
        except Exception as e:
            log.exception("%s: unexpected error", verb.title)
            raise VdsmError(f"unexpected {type(e).__name__} in {verb.title}: {e}") from e

    def _report(self, verb: Verb, code: int, started: float) -> None:
        if self._on_call is not None:
            self._on_call(verb.title, code, time.monotonic() - started)

    def _bounded(self, verb: Verb, method: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """``method(**kwargs)`` in a thread of its own, waited for at most the bound."""
        outcome: dict[str, Any] = {}
        finished = threading.Event()

        def run() -> None:
            try:
                outcome["result"] = method(**kwargs)
            except BaseException as e:  # handed to the caller's thread, which handles it
                outcome["error"] = e
            finally:
                finished.set()

        threading.Thread(target=run, name=f"read-{verb.call}", daemon=True).start()
        if not finished.wait(self.storage_read_timeout):
            raise StorageDomainAccessError(
                f"{verb.title} did not finish within {self.storage_read_timeout:g}s: the "
                "storage it reads does not answer (repoStats tells when its domain answers "
                "again)"
            )
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]


def _safe(flow_id: str | None) -> str:
    return "None" if flow_id is None else shown(flow_id, BRIEF_LENGTH)


def _brief(kwargs: Mapping[str, Any]) -> str:
    # repr() escapes control characters in strings, also inside lists and dicts; shown() then
    # escapes what a repr() of another type could still carry, and cuts the length.
    return shown(", ".join(f"{k}={v!r}" for k, v in kwargs.items()), BRIEF_LENGTH)
