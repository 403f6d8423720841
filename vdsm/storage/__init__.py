"""Storage: file storage domains, images, volumes, metadata, locks and the qemu-img adapter.

Nothing here knows about XML-RPC or libvirt; errors are raised as ``vdsm.errors`` types.
"""
