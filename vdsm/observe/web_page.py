"""The read-only web page of the host: GET / (the page, one self-contained HTML file that
loads nothing from elsewhere) and GET /status.json (the host's state it redraws every second:
host_state.snapshot). No write action exists here: the page only reads."""

from __future__ import annotations

import json
from importlib import resources

from vdsm.observe.host_state import Read, snapshot

PAGE_PATH = "/"
STATUS_PATH = "/status.json"


class WebPage:
    """The page's two views, over the dispatcher's read."""

    def __init__(self, read: Read) -> None:
        self._read = read
        # Read once: the page is part of the installed package, never a file a client names.
        self._page = resources.files("vdsm.observe").joinpath("page.html").read_bytes()

    def page(self) -> tuple[bytes, str]:
        return self._page, "text/html; charset=utf-8"

    def status(self) -> tuple[bytes, str]:
        return json.dumps(snapshot(self._read)).encode(), "application/json"
