"""libvirt domain XML: built from a VmSpec and its prepared drives, and read back from the live
domain.

Each disk names its whole backing chain with formats (``<backingStore>``), so libvirt and
QEMU never probe an image's format: a guest that writes a qcow2 header into a raw volume must
not be able to make it read as qcow2. Disks carry the user alias ``ua-<imageID>``, which is how
a libvirt disk is matched to its image after a restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lxml import etree

from vdsm.virt.drives import Drive, VolumeLink
from vdsm.virt.vm_spec import VmSpec

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ALIAS_PREFIX = "ua-"


def disk_alias(image_id: str) -> str:
    return ALIAS_PREFIX + image_id


def build(
    spec: VmSpec,
    drives: Sequence[Drive],
    domain_type: str,
    leases: Sequence[etree._Element] = (),
) -> str:
    """The domain XML; ``leases``: ``<lease>`` devices (vm_leases.py) QEMU must hold."""
    domain = etree.Element("domain", type=domain_type, nsmap={"qemu": QEMU_NS})
    etree.SubElement(domain, "name").text = spec.name
    etree.SubElement(domain, "uuid").text = spec.vm_id
    etree.SubElement(domain, "memory", unit="MiB").text = str(spec.mem_mib)
    etree.SubElement(domain, "vcpu").text = str(spec.smp)
    os_el = etree.SubElement(domain, "os")
    etree.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    if spec.kernel is not None:
        etree.SubElement(os_el, "kernel").text = str(spec.kernel)
        if spec.initrd is not None:
            etree.SubElement(os_el, "initrd").text = str(spec.initrd)
        etree.SubElement(os_el, "cmdline").text = spec.kernel_args
    if domain_type == "qemu":
        # Under TCG the emulated CPU's features are free; with RDRAND the guest kernel's
        # random number generator starts at once (a second faster boot, measured).
        etree.SubElement(domain, "cpu", mode="maximum", check="none")
    features = etree.SubElement(domain, "features")
    etree.SubElement(features, "acpi")
    # A guest that stops ends its VM: the engine decides what happens next, not libvirt.
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        etree.SubElement(domain, event).text = "destroy"
    devices = etree.SubElement(domain, "devices")
    for drive in drives:
        devices.append(_disk(drive))
    for lease in leases:
        devices.append(lease)
    if spec.console_log is not None:
        serial = etree.SubElement(devices, "serial", type="file")
        etree.SubElement(serial, "source", path=str(spec.console_log), append="on")
        etree.SubElement(serial, "target", port="0")
    etree.SubElement(devices, "memballoon", model="none")
    if spec.share_rw and drives:
        domain.append(_share_rw_override(drives))
    return etree.tostring(domain, encoding="unicode")


def _disk(drive: Drive) -> etree._Element:
    disk = etree.Element("disk", type="file", device="disk")
    leaf = drive.chain[-1]
    # Native AIO needs O_DIRECT, which only cache modes none and directsync give.
    io = "native" if drive.cache in ("none", "directsync") else "threads"
    etree.SubElement(
        disk,
        "driver",
        name="qemu",
        type=leaf.format,
        cache=drive.cache,
        io=io,
        error_policy="stop",
    )
    etree.SubElement(disk, "source", file=leaf.path)
    disk.append(backing_store(drive.chain[:-1]))
    etree.SubElement(disk, "target", dev=drive.target, bus="virtio")
    if drive.readonly:
        etree.SubElement(disk, "readonly")
    etree.SubElement(disk, "serial").text = drive.image_id[:20]
    etree.SubElement(disk, "alias", name=disk_alias(drive.image_id))
    return disk


def backing_store(chain: Sequence[VolumeLink]) -> etree._Element:
    """``<backingStore>`` elements for ``chain`` (base → top), ending with an empty one that
    tells libvirt the base has no backing file."""
    element = etree.Element("backingStore")
    for link in chain:  # base first: each newer layer wraps what was built so far
        wrapper = etree.Element("backingStore", type="file")
        etree.SubElement(wrapper, "format", type=link.format)
        etree.SubElement(wrapper, "source", file=link.path)
        wrapper.append(element)
        element = wrapper
    return element


def disk_source_xml(chain: Sequence[VolumeLink], target: str | None = None) -> str:
    """A standalone ``<disk>`` describing ``chain`` (base → leaf): the destination of a block
    copy or the source of a snapshot, with every format spelled out."""
    leaf = chain[-1]
    disk = etree.Element("disk", type="file", device="disk")
    etree.SubElement(disk, "driver", name="qemu", type=leaf.format)
    etree.SubElement(disk, "source", file=leaf.path)
    disk.append(backing_store(chain[:-1]))
    if target is not None:
        etree.SubElement(disk, "target", dev=target, bus="virtio")
    return etree.tostring(disk, encoding="unicode")


def _share_rw_override(drives: Sequence[Drive]) -> etree._Element:
    q = f"{{{QEMU_NS}}}"
    override = etree.Element(q + "override")
    for drive in drives:
        device = etree.SubElement(override, q + "device", alias=disk_alias(drive.image_id))
        frontend = etree.SubElement(device, q + "frontend")
        etree.SubElement(frontend, q + "property", name="share-rw", type="bool", value="true")
    return override


@dataclass(frozen=True)
class Mirror:
    """A block copy in progress on a disk, as the live XML shows it."""

    job: str
    ready: bool
    path: str
    format: str


@dataclass(frozen=True)
class LiveDisk:
    target: str
    alias: str
    chain: tuple[tuple[str, str], ...]  # (path, format), base → leaf
    mirror: Mirror | None


def read_disks(xml: str) -> dict[str, LiveDisk]:
    """The disks of a live domain, by target name."""
    root = etree.fromstring(xml.encode())
    disks: dict[str, LiveDisk] = {}
    for disk in root.iterfind("devices/disk[@device='disk']"):
        target = disk.find("target")
        if target is None:
            continue
        alias = disk.find("alias")
        chain: list[tuple[str, str]] = []
        node: etree._Element | None = disk
        while node is not None:
            source = node.find("source")
            fmt = node.find("driver") if node is disk else node.find("format")
            if source is None or source.get("file") is None:
                break
            chain.append((source.get("file", ""), fmt.get("type", "") if fmt is not None else ""))
            node = node.find("backingStore")
        mirror_el = disk.find("mirror")
        mirror = None
        if mirror_el is not None:
            mirror_source = mirror_el.find("source")
            mirror_format = mirror_el.find("format")
            mirror = Mirror(
                job=mirror_el.get("job", ""),
                ready=mirror_el.get("ready") == "yes",
                path=mirror_source.get("file", "") if mirror_source is not None else "",
                format=mirror_format.get("type", "") if mirror_format is not None else "",
            )
        disks[target.get("dev", "")] = LiveDisk(
            target=target.get("dev", ""),
            alias=alias.get("name", "") if alias is not None else "",
            chain=tuple(reversed(chain)),
            mirror=mirror,
        )
    return disks
