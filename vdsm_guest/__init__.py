"""A tiny real guest for tests, the demo and the benchmark.

``build`` makes (and caches) a kernel and an initramfs from Debian's packages; the guest's
``/init`` (``init.sh``) writes numbered, checksummed blocks to its disk and logs each completed
write on the serial console; ``checker`` proves from that log that a disk image lost no write.
"""
