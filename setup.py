"""Packaging for vdsm: the daemon (vdsm), its client (vdsm_cli) and the API schema (vdsm_api).

The version has one source, ``__version__`` in vdsm/__init__.py; it is read as text so that
building never imports the package.
"""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).resolve().parent


def read_version() -> str:
    text = (HERE / "vdsm" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("__version__ not found in vdsm/__init__.py")
    return match.group(1)


setup(
    name="vdsm",
    version=read_version(),
    description="Host agent daemon for KVM hosts: live storage migration of running VMs' disks",
    long_description=(HERE / "README.md").read_text(encoding="utf-8")
    if (HERE / "README.md").exists()
    else "",
    long_description_content_type="text/markdown",
    packages=find_packages(
        include=[
            "vdsm",
            "vdsm.*",
            "vdsm_cli",
            "vdsm_cli.*",
            "vdsm_api",
            "vdsm_api.*",
            "vdsm_guest",
            "vdsm_guest.*",
        ]
    ),
    package_data={
        "vdsm_api": ["*.yml", "*.yaml", "*.json"],
        "vdsm_guest": ["init.sh"],
        "vdsm.observe": ["page.html"],
    },
    python_requires=">=3.11",
    install_requires=[
        "libvirt-python",
        "lxml",
        "PyYAML",
        # QEMU's own QMP client: the adaptive offline copy drives qemu-storage-daemon.
        "qemu.qmp",
        # /metrics in Prometheus' text format (vdsm/observe/metrics.py).
        "prometheus-client",
    ],
    extras_require={
        "test": [
            "pytest",
            "import-linter",
            "hypothesis",
            "fusepy",  # the storage-fault tests' FUSE fake (tests/fakes/faultfs.py)
            "ruff",
            "mypy",
            "types-lxml",
            "types-PyYAML",
            # The web page's test drives Debian's chromium through chromedriver.
            "selenium",
            "pillow",  # ... and checks its screenshot is not blank
        ],
    },
    entry_points={
        "console_scripts": [
            "vdsmd = vdsm.vdsmd:main",
            "vdsClient = vdsm_cli.vdsclient:main",
            "vdsm-tool = vdsm.tool:main",
        ],
    },
    zip_safe=False,
)
