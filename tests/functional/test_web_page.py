"""The host's web page in a real browser (headless Chromium, tests/functional/browser.py)
against a real vdsmd, while `vdsClient moveDisk` moves a running VM's disk under the tiny
guest's writes, as a person would watch it:

- the sync's bar advances (several distinct values between 0 and 100 %, never back) and the
  task ends "done"; the live storage migration is shown while it runs and ends "done: the
  disk is now on" the destination;
- afterwards the page shows the disk's new chain and domain, as getVmStats reports them;
- screenshots are saved under build/ (during the move, after it, on a narrow screen) and are
  not blank; on a narrow screen nothing overflows;
- when vdsmd stops answering, the page says so in plain words;
- /metrics then counts the move: one replication pivoted, with its pivot time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from selenium.webdriver.chrome.webdriver import WebDriver

from tests.functional.browser import chromium
from tests.functional.daemon_helpers import VdsmdProcess, running
from tests.functional.lsm_helpers import VmFixture, chain_of, guest_params, wait_writes
from tests.functional.mover import Mover
from tests.functional.test_metrics import scrape, value
from vdsm_guest.build import GuestImage

pytestmark = pytest.mark.libvirt

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "build"
# MiB/s the copies may take: the 24 MiB the sync copies take six seconds or more, long enough
# to watch the bar advance at the page's one look a second.
COPY_CAP_MIB = 4

# Every card of the page's work list, read in one call (the page redraws every second: an
# element found in one call may be replaced before the next).
CARDS = """
return [...document.querySelectorAll('#work [data-item]')].map(card => {
  const bar = card.querySelector('.bar');
  return {item: card.dataset.item, state: card.dataset.state || '', kind: card.dataset.kind || '',
          verb: card.dataset.verb || '', text: card.textContent,
          percent: bar ? parseFloat(bar.dataset.percent) : null};
});
"""


@pytest.fixture
def lsm_vdsmd(tmp_path: Path) -> Iterator[VdsmdProcess]:
    """The daemon of conftest's moving_vms, here with its copies capped."""
    args = ["--copy-rate-limit", str(COPY_CAP_MIB)]
    with running(VdsmdProcess(tmp_path / "vdsmd", extra_args=args)) as daemon:
        yield daemon


def wait_page(driver: WebDriver, script: str, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := driver.execute_script(script)):
        assert time.monotonic() < deadline, f"the page never showed {what}"
        time.sleep(0.2)
    return result


def not_blank(path: Path) -> bool:
    """More than a handful of colours, dark and light: text and bars, not an empty page."""
    with Image.open(path) as image:
        grey = image.convert("L")
        low, high = grey.getextrema()
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    return high - low > 128 and (colours is None or len(colours) > 16)


def test_a_person_watches_a_move_on_the_page(
    moving_vms: VmFixture, guest: GuestImage, tmp_path: Path
) -> None:
    vms, daemon = moving_vms, moving_vms.daemon
    vm_id = vms.start(**guest_params(guest, slots=64, pause=0.02))
    console = Path(vms.stats(vm_id)["consoleLog"])
    wait_writes(console, 10)
    origin = f"https://{daemon.address}"
    with chromium(daemon.pki, origin) as driver:
        driver.get(origin + "/")
        wait_page(
            driver,
            f"return document.querySelector('[data-vm=\"{vm_id}\"]') !== null",
            "the VM",
        )
        move = Mover(vms, vm_id, tmp_path).start()
        cards: list[dict[str, Any]] = []
        deadline = time.monotonic() + 180
        SCREENSHOTS.mkdir(exist_ok=True)
        during = SCREENSHOTS / "web-page-move.png"
        during.unlink(missing_ok=True)
        while move.proc.poll() is None:
            assert time.monotonic() < deadline, "the move did not end"
            now = driver.execute_script(CARDS)
            cards.extend(now)
            if not during.exists() and any(
                c["verb"] == "syncImageData" and 0 < (c["percent"] or 0) < 100 for c in now
            ):
                driver.save_screenshot(str(during))  # the page a person sees during the move
            time.sleep(0.25)
        code, output = move.finish()
        assert code == 0, output
        # What the page shows once it looked after the end of the move.
        time.sleep(2.5)
        final = driver.execute_script(CARDS)

        # The sync's bar advanced, never back, and its task ended done.
        sync = [c for c in cards if c["verb"] == "syncImageData" and c["percent"] is not None]
        assert sync, f"the page never showed the sync: {cards[-5:]}"
        percents = [c["percent"] for c in sync]
        assert percents == sorted(percents), percents
        assert len({p for p in percents if 0 < p < 100}) >= 2, percents
        # ... with the rate it goes at and the time it still needs.
        assert any("/s" in c["text"] and "ETA" in c["text"] for c in sync), sync
        # Done: finished (before the client cleared it), or ended once it was cleared.
        over = [
            c
            for c in final + cards
            if c["verb"] == "syncImageData" and c["state"] in ("finished", "ended")
        ]
        assert over and all("done" in c["text"] and "failed" not in c["text"] for c in over), over
        # The live storage migration was shown while it ran, and ended on the destination.
        assert any(c["kind"] == "replication" and c["state"] == "running" for c in cards)
        replication = [c for c in final if c["kind"] == "replication"]
        assert replication and "done: the disk is now on dst" in replication[0]["text"], final

        # The disk's chain and domain after the move, as getVmStats reports them.
        stats = vms.stats(vm_id)
        chain, domain = " ".join(chain_of(stats)), stats["disks"]["vda"]["domainID"]
        assert domain == vms.storage.sd2
        shown = wait_page(
            driver,
            "const c = document.querySelector('[data-chain=\"vda\"]');"
            f"return c && c.dataset.domain === '{domain}' ? c.dataset.volumes : null",
            "the disk on its new domain",
        )
        assert shown == chain

        assert during.exists() and not_blank(during)
        wide = SCREENSHOTS / "web-page.png"
        assert driver.save_screenshot(str(wide)) and not_blank(wide)
        # A narrow screen (a phone): nothing wider than the window.
        driver.set_window_size(380, 900)
        time.sleep(1.2)
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0, f"the page is {overflow} px wider than a narrow screen"
        narrow = SCREENSHOTS / "web-page-narrow.png"
        assert driver.save_screenshot(str(narrow)) and not_blank(narrow)

        # The move counted in /metrics: one replication pivoted, with the time libvirt took.
        samples = scrape(daemon)
        for name in (
            "vdsm_replication_duration_seconds",
            "vdsm_replication_switch_duration_seconds",
        ):
            assert value(samples, f"{name}_count", outcome="pivot") == 1, name
            assert value(samples, f"{name}_count", outcome="abort") == 0, name
        assert (
            0
            < value(samples, "vdsm_replication_switch_duration_seconds_sum", outcome="pivot")
            < value(samples, "vdsm_replication_duration_seconds_sum", outcome="pivot")
        )
        finish = value(samples, "vdsm_rpc_calls_total", verb="VM.diskReplicateFinish", code="0")
        assert finish >= 1

        # vdsmd stops answering: the page says so, and keeps the last figures.
        daemon.stop()
        problem = wait_page(
            driver,
            "const p = document.getElementById('problem');"
            "return p.style.display === 'block' ? p.textContent : null",
            "that vdsmd does not answer",
        )
        assert "vdsmd does not answer" in problem
        assert driver.execute_script(f"return !!document.querySelector('[data-vm=\"{vm_id}\"]')")
