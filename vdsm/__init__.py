"""vdsm: a host agent daemon for KVM hosts that live-migrates the disks of running VMs.

The package holds the daemon (``vdsmd``, ``config``, ``errors``), its RPC bindings
(``vdsm.rpc``), the thin API verbs (``vdsm.api``), the VM layer under libvirt (``vdsm.virt``), the
storage layer (``vdsm.storage``) and the host set-up tool (``vdsm-tool``: ``tool``, ``pki``).
docs/design.md describes the architecture, docs/contract.md the API contract.
"""

__version__ = "0.1.0"
