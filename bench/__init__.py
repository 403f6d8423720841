"""vdsm's benchmark suite: live storage migration measured against what a person would use
instead (qemu-img convert, dd), side by side in one run.

Run it from the repository root with ``.venv/bin/python -m bench`` (``--help`` for options).
It starts its own vdsmd and BIOS-only VMs under the local libvirt, builds every disk in a
temporary directory, and removes everything it made, even on failure. Results go to
``bench/results/<timestamp>.json`` (plus SVG plots); a full run also rewrites
``docs/benchmarks.md``. Not a test: CI runs only ``--smoke`` (tests/test_bench_smoke.py).
"""
