# The two commands of the README:
#   make train   set up .venv (if needed) and run `qfleet train` (local mode, default config)
#   make test    set up .venv (if needed) and run the test suite
# and the rest of what CI runs (.ci/run):
#   make cluster-test-deps   apt-get install what the namespace cluster test needs (root)
#   make test-long           the long tier: multi-node Ray, the namespace cluster, soak, fuzz
# Extra arguments go through ARGS, e.g. `make train ARGS="--actors 4"`.

PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.qfleet-installed
# The exact versions of torch, ray and msgpack: pinned there and only there.
CONSTRAINTS := deploy/constraints.txt

.PHONY: train test test-long cluster-test-deps setup clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	@# torch first: its pin resolves to the CPU build where there is no GPU (and to the
	@# CUDA build on a GPU machine) instead of the newest multi-GB CUDA wheels.
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) torch
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(BIN)/qfleet train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not long" $(ARGS)

test-long: $(STAMP)
	$(BIN)/python -m pytest -m long $(ARGS)

# The namespace cluster test (tests/test_netns_cluster.py) needs rsync and sshd; without
# them it skips and names what is missing. Installs only when one is missing.
cluster-test-deps:
	@if command -v rsync >/dev/null 2>&1 && PATH="$$PATH:/usr/sbin" command -v sshd >/dev/null 2>&1; then \
	  echo "cluster-test-deps: rsync and sshd are installed"; \
	else \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rsync openssh-server \
	    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rsync openssh-server; }; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
