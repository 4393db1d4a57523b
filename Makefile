# calico-bgp: everything a fresh Debian machine needs, installed by the targets themselves.
#   make lab        bring up the default lab (3-node full mesh) and prove pod-to-pod reachability
#   make lab-down   remove it
#   make test       the whole suite (unit, golden, etcd, kernel/netns and lab tests; run as root)
#   make test-fast  unit, golden and layout tests only (under a minute; no etcd, namespaces or labs)
#   make lint       ruff and the import contracts (.importlinter)
#   make bench      calico-bgp vs BIRD 1.6 benchmarks (table + bench/results/latest.{json,md})
#   make fault      the fault campaign (tests/fault, full counts): writes tests/fault/RESULTS.md + results.json
#   make image      the containerlab node image (containerlab/Dockerfile) built with podman
#   make image-test that image, then the containerlab stand-in deploy test (tests/container)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := etcd-server iproute2 nftables iputils-ping procps python3-venv socat
INTEROP_PACKAGES := bird2 frr gobgpd etcd-client
# promtool and Prometheus (the alert rules' tests, `lab up --prometheus`), Graphviz (`lab show -o dot`)
MONITORING_PACKAGES := prometheus graphviz
BIRD16_DIR := .cache/bird16
STAMP := $(VENV)/.installed
TOPOLOGY ?= mesh
NODES ?= 3
BENCH_ARGS ?=
# The campaign's counts (each test's default is the small one `make test` uses for the fault_quick subset).
# FAULT_FRESH=1 rewrites the result files from this run's rows only; 0 merges into the earlier rows.
FAULT_ARGS ?=
FAULT_FRESH ?= 1
FAULT_COUNTS := CALICO_BGP_FAULT_FLAPS=1000 CALICO_BGP_FAULT_RESTARTS=20 CALICO_BGP_FAULT_CRASHES=10 \
	CALICO_BGP_FAULT_STOPS=3 CALICO_BGP_FAULT_ETCD_OUTAGE_S=60 CALICO_BGP_FAULT_ETCD_RESTART_OUTAGE_S=150 \
	CALICO_BGP_FAULT_REFUSAL_ROUTES=2000 CALICO_BGP_FAULT_REFUSAL_WINDOW_S=60

.PHONY: deps interop-deps venv lab lab-down test test-fast lint bench fault clean image-deps base-image image image-test

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
	@# Debian starts a prometheus service on install and recommends node-exporter (listening on every
	@# address): installed without recommends, service starts denied by a policy-rc.d held for the install
	@# only, and the unit disabled and stopped where systemd runs, so none of it runs or listens afterwards.
	@missing=""; for p in $(MONITORING_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages (no services started):$$missing"; \
		added=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && added=1; \
		fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$$missing >/dev/null; rc=$$?; \
		if [ -n "$$added" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
		if [ -d /run/systemd/system ]; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi; \
		exit $$rc; \
	fi
	@if [ ! -x $(BIRD16_DIR)/usr/sbin/bird ]; then \
		echo "unpacking bird 1.6 into $(BIRD16_DIR)"; \
		rm -rf $(BIRD16_DIR) $(BIRD16_DIR).deb && mkdir -p $(BIRD16_DIR).deb && \
		(cd $(BIRD16_DIR).deb && apt-get download -qq 'bird=1.6.8*' 2>/dev/null || \
			{ apt-get update -qq && apt-get download -qq 'bird=1.6.8*'; }) && \
		dpkg -x $(BIRD16_DIR).deb/bird_*.deb $(BIRD16_DIR) && rm -rf $(BIRD16_DIR).deb; \
	fi

# constraints.txt pins every package to the versions tested together; pyproject.toml keeps the ranges.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: deps $(STAMP)

lab: venv
	$(BIN)/calico-bgp lab up $(TOPOLOGY) --nodes $(NODES)

lab-down: venv
	$(BIN)/calico-bgp lab down $(TOPOLOGY)

# The fault campaign's quick subset (fault_quick, small counts) runs here; the whole campaign in `make fault`.
# Every check of `make lint` runs first.
test: lint interop-deps
	$(BIN)/pytest -q -ra -m "not fault or fault_quick"

# The developer's loop: unit, golden and layout tests (layers and import contracts included), under a minute;
# no etcd, namespaces or labs needed (tests that want root skip without it).
test-fast: venv
	$(BIN)/pytest -q -ra tests/unit tests/golden tests/test_layout.py

# Faults injected into network-namespace labs (tests/fault), one result row per fault; several hours at
# these counts (the 1,000-flap runs dominate). Results: tests/fault/RESULTS.md and tests/fault/results.json.
fault: venv interop-deps
	$(FAULT_COUNTS) CALICO_BGP_FAULT_RESULTS=tests/fault CALICO_BGP_FAULT_FRESH=$(FAULT_FRESH) \
		$(BIN)/pytest -q -ra -m fault tests/fault $(FAULT_ARGS)

# Static checks, one line each: style (ruff) and the import contracts in .importlinter (layers, no cycles,
# pure modules without I/O).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

# calico-bgp vs BIRD 1.6 side by side (bench/): prints the table and writes bench/results/latest.{json,md}.
# BENCH_ARGS=--quick for a short development run; `python -m bench profile|settings` for the diagnostics.
bench: venv
	$(BIN)/python -m bench $(BENCH_ARGS)

# The node image, built with Debian's podman. These flags are what this kind of machine needs: crun and the
# default rlimits are refused by its kernel setup, so runc, cgroupfs and explicit ulimits; the build uses the
# host's network (no bridge or NAT rules added to the host). There is no registry, so the base image is a
# debootstrap'd bookworm imported under the name the Dockerfile asks for, made once (skipped when present).
# CA_BUNDLE is passed as an optional build secret for pip and apt behind a TLS-inspecting proxy.
IMAGE := calico-bgp-node
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
BASE_IMAGE := debian:bookworm-slim
DEBIAN_MIRROR ?= http://deb.debian.org/debian
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
PODMAN := podman --runtime runc --cgroup-manager cgroupfs
PODMAN_ULIMITS := --ulimit nofile=1024:1024 --ulimit nproc=1024:1024
IMAGE_PACKAGES := podman runc debootstrap

image-deps:
	@missing=""; for p in $(IMAGE_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

base-image: image-deps
	@if $(PODMAN) image exists $(BASE_IMAGE); then \
		echo "$(BASE_IMAGE) present"; \
	else \
		root=$$(mktemp -d /var/tmp/calico-bgp-base.XXXXXX) && \
		trap 'rm -rf "$$root"' EXIT && \
		echo "debootstrap bookworm (minbase) into $$root" && \
		debootstrap --variant=minbase bookworm "$$root" $(DEBIAN_MIRROR) >"$$root.log" 2>&1 || \
			{ tail -20 "$$root.log"; rm -f "$$root.log"; exit 1; }; \
		rm -f "$$root.log"; \
		rm -rf "$$root"/var/cache/apt/archives/*.deb "$$root"/var/lib/apt/lists/*; \
		tar -C "$$root" -c . | $(PODMAN) import - $(BASE_IMAGE); \
	fi

image: base-image
	@secret=""; if [ -r "$(CA_BUNDLE)" ]; then secret="--secret id=ca,src=$(CA_BUNDLE)"; fi; \
	set -x; $(PODMAN) build --network host $(PODMAN_ULIMITS) $$secret -f containerlab/Dockerfile \
		-t $(IMAGE):$(IMAGE_VERSION) -t $(IMAGE):latest .

image-test: image venv
	$(BIN)/pytest -q -ra tests/container

clean:
	rm -rf $(VENV) build *.egg-info
