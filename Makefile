# Build, install, check, demo and package vdsm.
#
#   make check   set up the host, the venv and its certificates, then lint and run the tests
#   make demo    set up the host, the venv and its certificates, then run scripts/demo.py
#   make cluster-demo   the same, then scripts/cluster_demo.py (two hosts, an SPM failover)
#   make rpm     build build/rpm/RPMS/noarch/vdsm-<version>-*.noarch.rpm
#
# The venv is rebuilt only when setup.py changes (stamp file $(VENV)/.installed).

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VERSION := $(shell sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' vdsm/__init__.py)
RPM_TOP := $(CURDIR)/build/rpm
TARBALL := $(RPM_TOP)/SOURCES/vdsm-$(VERSION).tar.gz
PYTEST_ARGS ?=

.PHONY: all venv host pki sanlock-binding lint test check demo cluster-demo rpm docs bench soak clean

all: check

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet -e '.[test]'
	touch $@

host:
	bash scripts/setup-host.sh

# sanlock's Python binding is Debian's python3-sanlock (it is not on PyPI): link its module into
# the venv, whose interpreter has the same ABI (cpython-311). Keeps a link that works.
SANLOCK_SO = $(firstword $(wildcard /usr/lib/python3/dist-packages/sanlock.cpython-311-*.so))
sanlock-binding: $(STAMP)
	@$(VPY) -c 'import sanlock' 2>/dev/null || { \
		test -n "$(SANLOCK_SO)" || { echo "make: no python3-sanlock module (run make host)" >&2; exit 1; }; \
		ln -sf "$(SANLOCK_SO)" "$$($(VPY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/"; }
	@$(VPY) -c 'import sanlock; print("sanlock binding:", sanlock.__file__)'

# This host's certificates (vdsmd serves TLS with client certificates by default); keeps
# those that exist.
pki: $(STAMP)
	$(VENV)/bin/vdsm-tool configure

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy vdsm vdsm_cli vdsm_api vdsm_guest bench
	$(VENV)/bin/lint-imports

# pytest exits 5 when it collected no test: that must fail loudly, never pass as "green".
test: $(STAMP)
	@rc=0; $(VPY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

check: host venv sanlock-binding pki lint test

# docs/api.md is generated from the schema; a test fails while it is stale.
docs: $(STAMP)
	$(VPY) -m vdsm_api.docs > docs/api.md

# The benchmark suite (not a test; CI runs only its smoke run): docs/benchmarks.md.
bench: host venv sanlock-binding pki
	$(VPY) -m bench

# The randomized soak (not in CI, which runs a short one): SOAK_MOVES moves (default 200),
# SOAK_SEED to run the same ones again, then the load run (30 moves under 50 callers and the
# fuzzer); figures in build/soak.json and build/load.json (docs/reliability.md).
soak: host venv sanlock-binding pki
	$(VPY) -m tests.functional.soak
	$(VPY) -m tests.functional.soak --moves 30 --load 50 --report build/load.json
	$(VPY) -m tests.functional.soak --moves 50 --hosts 2 --report build/soak-2hosts.json

demo: host venv sanlock-binding pki
	$(VPY) scripts/demo.py

cluster-demo: host venv sanlock-binding pki
	$(VPY) scripts/cluster_demo.py

# The RPM is built from a tarball of the working tree: tracked and untracked files that git does
# not ignore (so never .venv/ or build/), or, outside a git work tree, everything but those.
rpm:
	rm -rf $(RPM_TOP)
	mkdir -p $(RPM_TOP)/SOURCES $(RPM_TOP)/SPECS $(RPM_TOP)/BUILD $(RPM_TOP)/BUILDROOT \
		$(RPM_TOP)/RPMS $(RPM_TOP)/SRPMS
	sed 's/@VERSION@/$(VERSION)/g' vdsm.spec.in > $(RPM_TOP)/SPECS/vdsm.spec
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
		git ls-files -z --cached --others --exclude-standard \
		| xargs -0 -r sh -c 'for f; do [ -e "$$f" ] && printf "%s\0" "$$f"; done' sh \
		| tar --null -T - --transform 's,^,vdsm-$(VERSION)/,S' -czf $(TARBALL); \
	else \
		tar --exclude=./.venv --exclude=./build --exclude=__pycache__ --exclude='*.egg-info' \
			--exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache \
			--exclude=.hypothesis --exclude=.benchmarks --exclude=./dist \
			--transform 's,^\.,vdsm-$(VERSION),S' -czf $(TARBALL) .; \
	fi
	rpmbuild -bb --nodeps --define '_topdir $(RPM_TOP)' $(RPM_TOP)/SPECS/vdsm.spec
	@ls -1 $(RPM_TOP)/RPMS/*/*.rpm

clean:
	rm -rf build dist $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis .benchmarks
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
