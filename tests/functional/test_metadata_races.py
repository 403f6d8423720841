"""Pool and domain metadata changes are serialised: callers started together behind a barrier
get one consistent outcome, every round.

Before the lock, with two callers released at once: two createStorageDomain of one sdUUID in
two directories both succeeded (20 of 20 rounds), two createStoragePool of one spUUID both
succeeded with two masters (8/10), two attachStorageDomain to one pool lost a member (10/10),
and one domain was attached to two pools at once (4/10).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from tests.functional.daemon_helpers import VdsmdProcess, new_uuid, start_spm

ROUNDS = 6  # each round races a full set of operations; 6 caught every race found so far


def together(daemon: VdsmdProcess, calls: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
    """Run each (verb, args) in its own thread, with its own connection, released by one
    barrier; return their status codes in order."""
    proxies = [daemon.xmlrpc() for _ in calls]
    for proxy in proxies:
        assert proxy.ping()["status"]["code"] == 0  # connected and handshaken before the race
    barrier = threading.Barrier(len(calls))
    codes: list[int] = [-1] * len(calls)

    def run(index: int) -> None:
        verb, args = calls[index]
        barrier.wait(timeout=30)
        codes[index] = int(getattr(proxies[index], verb)(*args)["status"]["code"])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return codes


def mkdirs(root: Path, *names: str) -> list[str]:
    paths = []
    for name in names:
        (root / name).mkdir(parents=True)
        paths.append(str(root / name))
    return paths


def domain(daemon: VdsmdProcess, directory: Path) -> str:
    sd = new_uuid()
    directory.mkdir(parents=True, exist_ok=True)
    reply = daemon.xmlrpc().createStorageDomain(4, sd, "d", str(directory), 1)
    assert reply["status"]["code"] == 0, reply
    return sd


def test_one_sd_uuid_created_in_two_directories(vdsmd: VdsmdProcess, tmp_path: Path) -> None:
    for n in range(ROUNDS * 2):
        sd = new_uuid()
        a, b = mkdirs(tmp_path / f"round{n}", "a", "b")
        codes = together(
            vdsmd,
            [
                ("createStorageDomain", (4, sd, "a", a, 1)),
                ("createStorageDomain", (4, sd, "b", b, 1)),
            ],
        )
        assert sorted(codes) == [0, 365], (n, codes)
        made = [d for d in (a, b) if (Path(d) / sd).exists()]
        assert len(made) == 1, (n, made)  # the loser left no directory behind
        info = vdsmd.xmlrpc().getStorageDomainInfo(sd)["info"]
        assert info["remotePath"] == made[0]


def test_one_sp_uuid_created_twice(vdsmd: VdsmdProcess, tmp_path: Path) -> None:
    for n in range(ROUNDS):
        sp = new_uuid()
        masters = [domain(vdsmd, tmp_path / f"r{n}" / name) for name in ("a", "b")]
        codes = together(
            vdsmd,
            [("createStoragePool", (0, sp, "dc", m, [m], 1)) for m in masters],
        )
        assert sorted(codes) == [0, 316], (n, codes)
        roles = [vdsmd.xmlrpc().getStorageDomainInfo(m)["info"]["role"] for m in masters]
        assert sorted(roles) == ["Master", "Regular"], (n, roles)


def become_spm(vdsmd: VdsmdProcess, sp: str, master: str) -> None:
    assert vdsmd.xmlrpc().connectStoragePool(sp, 1, "", master, 1)["status"]["code"] == 0
    start_spm(vdsmd, sp)


def test_two_domains_attached_to_one_pool_at_once(vdsmd: VdsmdProcess, tmp_path: Path) -> None:
    # One pool for every round: joining its lockspace takes seconds, the race is in the attach.
    sp, master = new_uuid(), domain(vdsmd, tmp_path / "master")
    assert vdsmd.xmlrpc().createStoragePool(0, sp, "dc", master, [master], 1)["status"]["code"] == 0
    become_spm(vdsmd, sp, master)  # attaching is an SPM verb
    attached = [master]
    for n in range(ROUNDS):
        members = [domain(vdsmd, tmp_path / f"r{n}" / name) for name in ("a", "b", "c")]
        codes = together(
            vdsmd,
            [("attachStorageDomain", (sd, sp)) for sd in members],
        )
        assert codes == [0, 0, 0], (n, codes)
        attached += members
        info = vdsmd.xmlrpc().getStoragePoolInfo(sp)
        assert sorted(info["dominfo"]) == sorted(attached), (n, info)


def test_one_domain_attached_to_two_pools_at_once(vdsmd: VdsmdProcess, tmp_path: Path) -> None:
    # Two pools for every round, each with its SPM started once; each round races a new domain.
    pools = []
    for name in ("p1", "p2"):
        sp, master = new_uuid(), domain(vdsmd, tmp_path / name)
        reply = vdsmd.xmlrpc().createStoragePool(0, sp, name, master, [master], 1)
        assert reply["status"]["code"] == 0, reply
        become_spm(vdsmd, sp, master)
        pools.append(sp)
    for n in range(ROUNDS):
        sd = domain(vdsmd, tmp_path / f"r{n}" / "shared")
        codes = together(
            vdsmd,
            [("attachStorageDomain", (sd, sp)) for sp in pools],
        )
        assert sorted(codes) == [0, 380], (n, codes)
        owner = vdsmd.xmlrpc().getStorageDomainInfo(sd)["info"]["pool"]
        holding = [sp for sp in pools if sd in vdsmd.xmlrpc().getStoragePoolInfo(sp)["dominfo"]]
        assert holding == owner, (n, owner, holding)
