"""The one error hierarchy of vdsm, with VDSM's stable numeric codes.

Every failure the daemon can report is a subclass of :class:`VdsmError`. Code below the API
raises these; only the RPC boundary turns them into the ``{'status': {'code', 'message'}}``
envelope, and only the CLI turns them into messages and exit codes.

Each class carries VDSM's ``code`` and ``name`` (the public contract, see docs/contract.md §6) and
a ``title``; the instance adds a ``detail`` that names the VM, volume, image, domain, task or
parameter at fault, so every message is something a person can act on.
"""

from __future__ import annotations

from typing import ClassVar


class VdsmError(Exception):
    """Base of every vdsm error; also VDSM's GeneralException (100) when raised directly."""

    code: ClassVar[int] = 100
    name: ClassVar[str] = "GeneralException"
    title: ClassVar[str] = "General exception"

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.title}: {self.detail}" if self.detail else self.title


# --- VM layer ---------------------------------------------------------------------------------


class NoSuchVM(VdsmError):
    code = 1
    name = "noVM"
    title = "Virtual machine does not exist"


class VmDown(VdsmError):
    """The operation needs a running VM, and the VM's QEMU is gone."""

    code = 6
    name = "down"
    title = "Virtual machine is down"


class VMExists(VdsmError):
    code = 4
    name = "exist"
    title = "Virtual machine already exists"


class VMCreateError(VdsmError):
    code = 9
    name = "createErr"
    title = "Error creating the requested VM"


class DriveNotFound(VdsmError):
    code = 13
    name = "imageErr"
    title = "Drive image file could not be found"


class ReplicationNotReady(VdsmError):
    code = 40
    name = "unavail"
    title = "Resource unavailable"


class DriveSwitchFailed(VdsmError):
    code = 41
    name = "changeDisk"
    title = "Failed to change disk image"


class SnapshotError(VdsmError):
    code = 48
    name = "snapshotErr"
    title = "Snapshot failed"


class MergeError(VdsmError):
    code = 52
    name = "mergeErr"
    title = "Merge failed"


class ReplicationError(VdsmError):
    code = 55
    name = "replicaErr"
    title = "Drive replication error"


class ReplicationNotInProgress(VdsmError):
    code = 88
    name = "ReplicationNotInProgress"
    title = "Drive replication not in progress"


# --- volumes ----------------------------------------------------------------------------------


class VolumeDoesNotExist(VdsmError):
    code = 201
    name = "VolumeDoesNotExist"
    title = "Volume does not exist"


class IncorrectFormat(VdsmError):
    code = 202
    name = "IncorrectFormat"
    title = "Incorrect volume format"


class VolumeImageHasChildren(VdsmError):
    code = 204
    name = "VolumeImageHasChildren"
    title = "Cannot delete a volume that has children"


class VolumeCreationError(VdsmError):
    code = 205
    name = "VolumeCreationError"
    title = "Error creating a new volume"


class VolumeMetadataReadError(VdsmError):
    code = 207
    name = "VolumeMetadataReadError"
    title = "Error while processing volume metadata"


class VolumeMetadataWriteError(VdsmError):
    code = 208
    name = "VolumeMetadataWriteError"
    title = "Error while updating volume metadata"

    def __init__(self, detail: str = "", errno: int | None = None) -> None:
        super().__init__(detail)
        self.errno = errno  # the OSError's, when the write failed in the file system


class VolumeAlreadyExists(VdsmError):
    code = 212
    name = "VolumeAlreadyExists"
    title = "Volume already exists"


class CannotDeleteVolume(VdsmError):
    code = 222
    name = "CannotDeleteVolume"
    title = "Volume deletion error"


class IllegalVolumeSnapshot(VdsmError):
    code = 226
    name = "createIllegalVolumeSnapshotError"
    title = "Cannot create volume snapshot from illegal volume"


class IllegalVolumePrepare(VdsmError):
    code = 227
    name = "prepareIllegalVolumeError"
    title = "Cannot prepare illegal volume"


# --- images -----------------------------------------------------------------------------------


class ImageDeleteError(VdsmError):
    code = 256
    name = "ImageDeleteError"
    title = "Could not remove all image's volumes"


class SourceImageActionError(VdsmError):
    code = 259
    name = "SourceImageActionError"
    title = "Error during source image manipulation"


class DestImageActionError(VdsmError):
    code = 260
    name = "DestImageActionError"
    title = "Error during destination image manipulation"


class CopyImageError(VdsmError):
    code = 261
    name = "CopyImageError"
    title = "Low level image copy failed"


class ImageIsNotLegalChain(VdsmError):
    code = 262
    name = "ImageIsNotLegalChain"
    title = "Image is not a legal chain"


class ImageDoesNotExistInSD(VdsmError):
    code = 268
    name = "ImageDoesNotExistInSD"
    title = "Image does not exist in domain"


# --- pools and domains ------------------------------------------------------------------------


class StoragePoolCreationError(VdsmError):
    code = 301
    name = "StoragePoolCreationError"
    title = "Error creating a storage pool"


class StoragePoolUnknown(VdsmError):
    code = 309
    name = "StoragePoolUnknown"
    title = "Unknown pool id, pool not connected"


class StoragePoolAlreadyExists(VdsmError):
    code = 316
    name = "StoragePoolAlreadyExists"
    title = "Error creating a storage pool - pool already exists"


class StoragePoolNotConnected(VdsmError):
    code = 313
    name = "StoragePoolNotConnected"
    title = "Storage pool not connected"


class StoragePoolWrongMaster(VdsmError):
    code = 324
    name = "StoragePoolWrongMaster"
    title = "Wrong Master domain or its version"


class StoragePoolConnected(VdsmError):
    code = 325
    name = "StoragePoolConnected"
    title = "Cannot perform action while storage pool is connected"


class StorageDomainCreationError(VdsmError):
    code = 351
    name = "StorageDomainCreationError"
    title = "Error creating a storage domain"


class StorageDomainNotInPool(VdsmError):
    code = 353
    name = "StorageDomainNotInPool"
    title = "Storage domain not in pool"


class StorageDomainDoesNotExist(VdsmError):
    code = 358
    name = "StorageDomainDoesNotExist"
    title = "Storage domain does not exist"


class StorageDomainMetadataNotFound(VdsmError):
    code = 364
    name = "StorageDomainMetadataNotFound"
    title = "Storage domain invalid, metadata not found"


class StorageDomainAlreadyExists(VdsmError):
    code = 365
    name = "StorageDomainAlreadyExists"
    title = "Storage domain already exists"


class StorageDomainLayoutError(VdsmError):
    code = 371
    name = "StorageDomainLayoutError"
    title = "Storage domain layout corrupted"


class StorageDomainAccessError(VdsmError):
    code = 379
    name = "StorageDomainAccessError"
    title = "Domain is either partially accessible or entirely inaccessible"


class StorageDomainAlreadyAttached(VdsmError):
    code = 380
    name = "StorageDomainAlreadyAttached"
    title = "Storage domain already attached to pool"


class NoSpaceLeftOnDomain(VdsmError):
    code = 397
    name = "NoSpaceLeftOnDomain"
    title = "No space left on domain"


# --- storage server connections (connectStorageServer, disconnectStorageServer) ---------------


class StorageServerActionError(VdsmError):
    code = 450
    name = "StorageServerActionError"
    title = "Error storage server action"


class StorageServerConnectionError(VdsmError):
    code = 451
    name = "StorageServerConnectionError"
    title = "Error storage server connection"


class StorageServerDisconnectionError(VdsmError):
    code = 452
    name = "StorageServerDisconnectionError"
    title = "Error storage server disconnection"


class StorageServerValidationError(VdsmError):
    code = 453
    name = "StorageServerValidationError"
    title = "The specified path does not exist or cannot be reached"


class StorageTypeError(VdsmError):
    code = 468
    name = "StorageTypeError"
    title = "Storage type error"


class MountError(VdsmError):
    code = 477
    name = "MountError"
    title = "Problem while trying to mount target"


# --- tasks ------------------------------------------------------------------------------------


class UnknownTask(VdsmError):
    code = 401
    name = "UnknownTask"
    title = "Task id unknown"


class TaskNotFinished(VdsmError):
    code = 403
    name = "TaskNotFinished"
    title = "Task not finished"


class TaskStateError(VdsmError):
    code = 410
    name = "TaskStateError"
    title = "Operation is not allowed in this task state"


class TaskAborted(VdsmError):
    code = 411
    name = "TaskAborted"
    title = "Task is aborted"


# --- SPM, parameters, misc --------------------------------------------------------------------


class SpmStartError(VdsmError):
    code = 650
    name = "SpmStartError"
    title = "Error starting SPM"


class AcquireLockFailure(VdsmError):
    code = 651
    name = "AcquireLockFailure"
    title = "Cannot obtain lock"


class SpmParamsMismatch(VdsmError):
    code = 652
    name = "SpmParamsMismatch"
    title = "Pool previous lver/id don't match request"


class SpmStopError(VdsmError):
    code = 653
    name = "SpmStopError"
    title = "Error stopping SPM, SPM has unfinished task(s)"


class SpmStatusError(VdsmError):
    code = 654
    name = "SpmStatusError"
    title = "Not SPM"


class SpmFenceError(VdsmError):
    code = 655
    name = "SpmFenceError"
    title = "Error fencing SPM"


class IsSpm(VdsmError):
    code = 656
    name = "IsSpm"
    title = "Operation not allowed while SPM is active"


class ReleaseLockFailure(VdsmError):
    code = 660
    name = "ReleaseLockFailure"
    title = "Cannot release lock"


class AcquireHostIdFailure(VdsmError):
    code = 661
    name = "AcquireHostIdFailure"
    title = "Cannot acquire host id"


class ReleaseHostIdFailure(VdsmError):
    code = 662
    name = "ReleaseHostIdFailure"
    title = "Cannot release host id"


class ClusterLockInitError(VdsmError):
    """The sanlock daemon does not answer, or a lease area cannot be formatted or read."""

    code = 701
    name = "ClusterLockInitError"
    title = "Could not initialize cluster lock"


class InvalidParameter(VdsmError):
    code = 1000
    name = "InvalidParameterException"
    title = "Invalid parameter"

    def __init__(self, param: str, value: object, reason: str = "") -> None:
        self.param = param
        self.value = value
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        detail = f"{param}={shown}"
        if reason:
            detail += f" ({reason})"
        super().__init__(detail)


class NotImplementedVerb(VdsmError):
    code = 2000
    name = "MiscNotImplementedException"
    title = "Method not implemented"


class ResourceTimeout(VdsmError):
    code = 851
    name = "ResourceTimeout"
    title = "Resource timeout"


# --- external commands ------------------------------------------------------------------------


class CommandError(VdsmError):
    """An external command (qemu-img, ...) failed; ``detail`` carries its argv and stderr."""

    code = 100
    name = "GeneralException"
    title = "Command failed"

    def __init__(self, argv: list[str], rc: int | None, stderr: str, reason: str = "") -> None:
        self.argv = list(argv)
        self.rc = rc
        self.stderr = stderr
        what = reason or f"exit code {rc}"
        text = stderr.strip()
        detail = f"{' '.join(self.argv)}: {what}"
        if text:
            detail += f": {text}"
        super().__init__(detail)


class CommandTimeout(CommandError):
    title = "Command timed out"


class CommandAborted(CommandError):
    title = "Command aborted"


class QemuImgError(CommandError):
    """qemu-img succeeded but said something vdsm cannot use (bad JSON, a missing key)."""

    code = 4002
    name = "QemuImgOutputError"
    title = "Unexpected qemu-img output"


# --- vdsm's own codes (4000-4099: VDSM has no code for these; above 5000 are the engine's) -----


class LibvirtError(VdsmError):
    """libvirt is unreachable (a refusal by libvirt is reported by each operation itself)."""

    code = 4001
    name = "LibvirtUnavailable"
    title = "libvirt is not available"


# Every error class the API can answer with, listed explicitly: the docs, the schema check and
# the CLI's code table are built from this list, not from whichever modules were imported.
ERROR_TYPES: tuple[type[VdsmError], ...] = (
    VdsmError,
    NoSuchVM,
    VmDown,
    VMExists,
    VMCreateError,
    DriveNotFound,
    ReplicationNotReady,
    DriveSwitchFailed,
    SnapshotError,
    MergeError,
    ReplicationError,
    ReplicationNotInProgress,
    VolumeDoesNotExist,
    IncorrectFormat,
    VolumeImageHasChildren,
    VolumeCreationError,
    VolumeMetadataReadError,
    VolumeMetadataWriteError,
    VolumeAlreadyExists,
    CannotDeleteVolume,
    IllegalVolumeSnapshot,
    IllegalVolumePrepare,
    ImageDeleteError,
    SourceImageActionError,
    DestImageActionError,
    CopyImageError,
    ImageIsNotLegalChain,
    ImageDoesNotExistInSD,
    StoragePoolCreationError,
    StoragePoolUnknown,
    StoragePoolAlreadyExists,
    StoragePoolNotConnected,
    StoragePoolWrongMaster,
    StoragePoolConnected,
    StorageDomainCreationError,
    StorageDomainNotInPool,
    StorageDomainDoesNotExist,
    StorageDomainMetadataNotFound,
    StorageDomainAlreadyExists,
    StorageDomainLayoutError,
    StorageDomainAccessError,
    StorageDomainAlreadyAttached,
    NoSpaceLeftOnDomain,
    StorageServerActionError,
    StorageServerConnectionError,
    StorageServerDisconnectionError,
    StorageServerValidationError,
    StorageTypeError,
    MountError,
    UnknownTask,
    TaskNotFinished,
    TaskStateError,
    TaskAborted,
    SpmStartError,
    AcquireLockFailure,
    SpmParamsMismatch,
    SpmStopError,
    SpmStatusError,
    SpmFenceError,
    IsSpm,
    ReleaseLockFailure,
    AcquireHostIdFailure,
    ReleaseHostIdFailure,
    ClusterLockInitError,
    InvalidParameter,
    NotImplementedVerb,
    ResourceTimeout,
    CommandError,
    CommandTimeout,
    CommandAborted,
    QemuImgError,
    LibvirtError,
)


def all_error_types() -> list[type[VdsmError]]:
    """Every error class of :data:`ERROR_TYPES`, for the schema, the docs and the CLI."""
    return list(ERROR_TYPES)
