"""Which OSErrors of storage code say something about the storage, and which do not.

A failed open() or read() of a domain's or a volume's metadata means a damaged layout only for
some errnos (a directory where a file belongs, a file where a directory belongs, a symlink
loop). Most others say nothing about the storage: the process is out of descriptors (EMFILE),
the host is (ENFILE) or out of memory (ENOMEM), the device failed (EIO). Reporting those as
"layout corrupted" (371) or "metadata unreadable" (207) sends an operator to repair storage
that is fine, so they are GeneralException (100) with the errno in the message.
"""

from __future__ import annotations

import errno
from pathlib import Path

from vdsm.errors import VdsmError

# The errnos of open() and read() that mean the path is not laid out as a domain must be.
LAYOUT_ERRNOS = frozenset({errno.EISDIR, errno.ENOTDIR, errno.ELOOP})
# The errnos that mean this process or host lacks a resource, whatever file is opened.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def general(action: str, path: Path | str, error: OSError) -> VdsmError:
    """GeneralException naming the path and the errno, as ``cannot open /x/dom_md/metadata:
    [Errno 24] Too many open files``."""
    return VdsmError(f"cannot {action} {path}: [Errno {error.errno}] {error.strerror}")
