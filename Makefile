# calico-bgp: everything a fresh Debian machine needs, installed by the targets themselves.
#   make lab        bring up the default lab (3-node full mesh) and prove pod-to-pod reachability
#   make lab-down   remove it
#   make test       the whole suite (unit, golden, etcd, kernel/netns and lab tests; run as root)
#   make bench      calico-bgp vs BIRD 1.6 benchmarks (table + bench/results/latest.{json,md})

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := etcd-server iproute2 nftables iputils-ping procps python3-venv
INTEROP_PACKAGES := bird2 frr gobgpd etcd-client
BIRD16_DIR := .cache/bird16
STAMP := $(VENV)/.installed
TOPOLOGY ?= mesh
NODES ?= 3
BENCH_ARGS ?=

.PHONY: deps interop-deps venv lab lab-down test lint bench clean

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Real BGP daemons for tests/interop (and etcdctl, which tests/containerlab runs the etcd seed script with).
# Debian's `bird` (1.6, Calico's engine) conflicts with `bird2`, so its .deb is unpacked privately under
# .cache/bird16 (tests/interop finds it there); nothing is started here.
interop-deps: deps
	@missing=""; for p in $(INTEROP_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@if [ ! -x $(BIRD16_DIR)/usr/sbin/bird ]; then \
		echo "unpacking bird 1.6 into $(BIRD16_DIR)"; \
		rm -rf $(BIRD16_DIR) $(BIRD16_DIR).deb && mkdir -p $(BIRD16_DIR).deb && \
		(cd $(BIRD16_DIR).deb && apt-get download -qq 'bird=1.6.8*' 2>/dev/null || \
			{ apt-get update -qq && apt-get download -qq 'bird=1.6.8*'; }) && \
		dpkg -x $(BIRD16_DIR).deb/bird_*.deb $(BIRD16_DIR) && rm -rf $(BIRD16_DIR).deb; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: deps $(STAMP)

lab: venv
	$(BIN)/calico-bgp lab up $(TOPOLOGY) --nodes $(NODES)

lab-down: venv
	$(BIN)/calico-bgp lab down $(TOPOLOGY)

test: venv interop-deps
	$(BIN)/ruff check .
	$(BIN)/pytest -q -ra

lint: venv
	$(BIN)/ruff check .

# calico-bgp vs BIRD 1.6 side by side (bench/): prints the table and writes bench/results/latest.{json,md}.
# BENCH_ARGS=--quick for a short development run; `python -m bench profile|settings` for the diagnostics.
bench: venv
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
