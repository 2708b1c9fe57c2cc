# The two commands of the README:
#   make train   set up .venv (if needed) and run `qfleet train` (local mode, default config)
#   make test    set up .venv (if needed) and run the test suite (what CI runs)
# Extra arguments go through ARGS, e.g. `make train ARGS="--actors 4"`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.qfleet-installed

.PHONY: train test setup clean

$(STAMP): pyproject.toml
	@# The cluster test (tests/test_netns_cluster.py) needs rsync and sshd. As root with
	@# apt-get, install them when one is missing; otherwise do nothing (the test then skips
	@# and names what is missing).
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	    && ! { command -v rsync >/dev/null 2>&1 && PATH="$$PATH:/usr/sbin" command -v sshd >/dev/null 2>&1; }; then \
	  echo "make: installing rsync and openssh-server for the cluster test: apt-get install -y --no-install-recommends rsync openssh-server"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rsync openssh-server \
	    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rsync openssh-server; }; \
	fi
	$(PYTHON) -m venv $(VENV)
	@# torch first and pinned: 2.13.0 resolves to the CPU build where there is no GPU
	@# (and to the CUDA build on a GPU machine) instead of the newest multi-GB CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(BIN)/qfleet train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
