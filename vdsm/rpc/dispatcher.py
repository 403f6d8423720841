"""Calls an API method for a schema verb and logs every call with its flow id and duration.

The dispatcher resolves each verb's ``call`` (``<namespace>.<method>``) once, at start-up, so
a schema naming a method the API lacks fails the daemon's start, not a caller's request.
Errors pass through as vdsm.errors types; an unexpected exception becomes GeneralException
(100) with a message naming it, and its traceback goes to the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from vdsm.errors import VdsmError
from vdsm_api.schema import Schema, Verb

log = logging.getLogger("vdsm.api")


class Dispatcher:
    def __init__(self, schema: Schema, namespaces: Mapping[str, object]) -> None:
        self.schema = schema
        self._methods: dict[str, Callable[..., Any]] = {}
        for verb in schema.verbs:
            namespace, _, method = verb.call.partition(".")
            target = getattr(namespaces.get(namespace), method, None)
            if not callable(target):
                raise RuntimeError(f"schema verb {verb.title} calls missing API {verb.call}")
            self._methods[verb.call] = target

    def call(self, verb: Verb, kwargs: dict[str, Any], flow_id: str | None) -> Any:
        """Run the verb's API method; log start and finish."""
        started = time.monotonic()
        log.info("START %s flow_id=%s args=%s", verb.title, flow_id, _brief(kwargs))
        try:
            result = self._methods[verb.call](**kwargs)
        except VdsmError as e:
            log.info(
                "FINISH %s flow_id=%s code=%d duration=%.3fs: %s",
                verb.title,
                flow_id,
                e.code,
                time.monotonic() - started,
                e.message,
            )
            raise
        except Exception as e:
            log.exception("FINISH %s flow_id=%s: unexpected error", verb.title, flow_id)
            raise VdsmError(f"unexpected {type(e).__name__} in {verb.title}: {e}") from e
        log.info(
            "FINISH %s flow_id=%s code=0 duration=%.3fs",
            verb.title,
            flow_id,
            time.monotonic() - started,
        )
        return result


def _brief(kwargs: Mapping[str, Any]) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return text if len(text) <= 500 else text[:497] + "..."
