"""vdsm: a host agent daemon for KVM hosts that live-migrates the disks of running VMs.

The package holds the daemon (``vdsmd``), its storage layer (``vdsm.storage``) and, in later
issues, the RPC bindings and the VM layer. See ``../shared/DESIGN.md`` for the architecture.
"""

__version__ = "0.1.0"
