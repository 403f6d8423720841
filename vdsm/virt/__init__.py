"""VMs under libvirt: the connection and its events, domain XML, the VM view and registry,
and one module per operation on a running VM (snapshot, replication, merge)."""
