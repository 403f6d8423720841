"""What the guest build needs from an unpacked Debian kernel package, read in pure Python.

- :func:`extract_vmlinux`: the uncompressed kernel inside a bzImage. QEMU boots it directly
  through its PVH entry point, skipping the decompressor, which is slow under TCG.
- :func:`resolve_modules`: the ``.ko`` files to load for a set of modules, dependencies
  first, read from each module's ``.modinfo`` (the package ships no ``modules.dep``, and the
  guest's busybox ``insmod`` resolves nothing).
"""

from __future__ import annotations

import gzip
import lzma
import struct
import zlib
from pathlib import Path

# x86 boot protocol (Documentation/arch/x86/boot.rst): offsets into the bzImage.
_SETUP_SECTS = 0x1F1
_HEADER_MAGIC = 0x202
_PROTOCOL_VERSION = 0x206
_PAYLOAD_OFFSET = 0x248
_PAYLOAD_LENGTH = 0x24C

_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b"

# The ELF note that marks a PVH entry point: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY.
_PVH_NOTE = (b"Xen", 18)
_PT_NOTE = 4

_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz")


class KernelError(Exception):
    """The kernel package does not have the shape the guest build relies on."""


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF kernel compressed inside ``bzimage`` if it can be booted via PVH, else None.

    None means "boot the bzImage instead": an old boot protocol, a compression the standard
    library cannot read (zstd, lz4, ...), or a kernel built without a PVH entry point.
    """
    if len(bzimage) < 0x250 or bzimage[_HEADER_MAGIC : _HEADER_MAGIC + 4] != b"HdrS":
        raise KernelError("not a bzImage: no 'HdrS' boot header")
    (version,) = struct.unpack_from("<H", bzimage, _PROTOCOL_VERSION)
    if version < 0x208:
        return None  # payload_offset/payload_length exist from protocol 2.08 on
    setup_sects = bzimage[_SETUP_SECTS] or 4  # 0 means 4, for historical reasons
    offset, length = struct.unpack_from("<II", bzimage, _PAYLOAD_OFFSET)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start : start + length]
    # The payload ends with the kernel's 4-byte size, after the compressed stream: decompressor
    # objects stop at the end of the stream and leave the rest in unused_data.
    if payload.startswith(_XZ_MAGIC):
        vmlinux = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif payload.startswith(_GZIP_MAGIC):
        vmlinux = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(payload)
    else:
        return None
    return vmlinux if has_pvh_note(vmlinux) else None


def has_pvh_note(elf: bytes) -> bool:
    """True if the 64-bit ELF image carries the Xen PHYS32_ENTRY note that PVH boot needs."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    phoff, phentsize, phnum = _u64(elf, 0x20), _u16(elf, 0x36), _u16(elf, 0x38)
    for index in range(phnum):
        base = phoff + index * phentsize
        (p_type,) = struct.unpack_from("<I", elf, base)
        if p_type != _PT_NOTE:
            continue
        p_offset, _, _, p_filesz = struct.unpack_from("<QQQQ", elf, base + 8)
        if _PVH_NOTE in _notes(elf[p_offset : p_offset + p_filesz]):
            return True
    return False


def _notes(data: bytes) -> list[tuple[bytes, int]]:
    """(name, type) of every ELF note in a PT_NOTE segment."""
    found = []
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, note_type = struct.unpack_from("<III", data, pos)
        pos += 12
        name = data[pos : pos + namesz].rstrip(b"\0")
        pos += (namesz + 3) & ~3
        pos += (descsz + 3) & ~3
        found.append((name, note_type))
    return found


def _u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "little")


def _u64(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 8], "little")


def modinfo(module: bytes) -> dict[str, str]:
    """The ``key=value`` strings of a module's ``.modinfo`` section (last value wins)."""
    if module[:4] != b"\x7fELF" or module[4] != 2:
        raise KernelError("a kernel module is not a 64-bit ELF file")
    shoff = _u64(module, 0x28)
    shentsize, shnum, shstrndx = (_u16(module, offset) for offset in (0x3A, 0x3C, 0x3E))

    def section(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        (name,) = struct.unpack_from("<I", module, base)
        offset, size = struct.unpack_from("<QQ", module, base + 0x18)
        return name, offset, size

    _, strtab, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        if module[strtab + name : module.index(b"\0", strtab + name)] == b".modinfo":
            entries = module[offset : offset + size].split(b"\0")
            pairs = (entry.decode(errors="replace").partition("=") for entry in entries if entry)
            return {key: value for key, _, value in pairs}
    raise KernelError("a kernel module has no .modinfo section")


def read_module(path: Path) -> bytes:
    """A module's ELF bytes, decompressed when the distribution ships it compressed."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def _module_name(path: Path) -> str:
    name = path.name
    for suffix in _MODULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    # The kernel treats '-' and '_' in module names as the same character.
    return name.replace("-", "_")


def resolve_modules(modules_dir: Path, wanted: list[str]) -> list[tuple[str, bytes]]:
    """``(name, ELF bytes)`` of ``wanted`` and their dependencies, each after its dependencies.

    ``modules_dir`` is ``lib/modules/<version>``. A module built into the kernel (listed in
    ``modules.builtin``) needs no loading and is left out.
    """
    available = {
        _module_name(path): path
        for path in modules_dir.rglob("*.ko*")
        if path.name.endswith(_MODULE_SUFFIXES)
    }
    builtin_list = modules_dir / "modules.builtin"
    builtin = set()
    if builtin_list.exists():
        builtin = {_module_name(Path(line)) for line in builtin_list.read_text().split()}

    ordered: list[tuple[str, bytes]] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in done or name in builtin:
            return
        if name in chain:
            raise KernelError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in available:
            raise KernelError(f"module {name} is neither in {modules_dir} nor built in")
        data = read_module(available[name])
        for dependency in filter(None, modinfo(data).get("depends", "").split(",")):
            visit(dependency, (*chain, name))
        done.add(name)
        ordered.append((name, data))

    for name in wanted:
        visit(name, ())
    return ordered
