"""The storage roots: the only directories in which a client may have a storage domain created.

createStorageDomain names a directory, and vdsmd, as root, creates files there. Without a
bound, any caller could make root create directories anywhere (``/etc``, ``/root/..``, through
a symlink planted in ``/tmp``). So the directory must be one of the configured roots or lie
under one, judged on its real path: ``..`` and every symlink are resolved first, so a link
inside a root that points outside it is refused, and the domain is then created at the real
path, never through the link.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vdsm.errors import InvalidParameter, StorageDomainCreationError


class StorageRoots:
    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = tuple(roots)

    def __str__(self) -> str:
        return ", ".join(str(r) for r in self.roots)

    def confine(self, directory: object, param: str) -> Path:
        """The real path of ``directory`` if it is an existing directory inside a root;
        InvalidParameter naming ``param`` if it is outside, 351 if it does not exist."""
        if not isinstance(directory, str) or not directory.startswith("/") or "\0" in directory:
            raise InvalidParameter(param, directory, "must be an absolute directory path")
        try:
            # Containment first, on the path resolved as far as it exists, so that a caller
            # cannot learn whether a path outside the roots exists from the answer.
            real = Path(directory).resolve()
        except (OSError, RuntimeError) as e:  # a symlink loop
            raise InvalidParameter(param, directory, f"cannot be resolved: {e}") from None
        if not any(real.is_relative_to(root) for root in self._real_roots()):
            raise InvalidParameter(
                param, directory, f"not inside a storage root ({self}; vdsmd's storage_roots)"
            )
        if not real.is_dir():
            raise StorageDomainCreationError(f"{directory} is not an existing directory")
        return real

    def _real_roots(self) -> list[Path]:
        found = []
        for root in self.roots:
            try:
                found.append(root.resolve(strict=True))
            except (OSError, RuntimeError):
                continue  # a root not mounted (yet) holds nothing
        return found
