# calico-bgp: everything a fresh Debian machine needs, installed by the targets themselves.
#   make lab        bring up the default lab (3-node full mesh) and prove pod-to-pod reachability
#   make lab-down   remove it
#   make test       the whole suite (unit, golden, etcd, kernel/netns and lab tests; run as root)
#   make bench      benchmarks (printing numbers)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := etcd-server iproute2 nftables iputils-ping procps python3-venv
STAMP := $(VENV)/.installed
TOPOLOGY ?= mesh
NODES ?= 3

.PHONY: deps venv lab lab-down test lint bench clean

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
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

test: venv
	$(BIN)/ruff check .
	$(BIN)/pytest -q -ra

lint: venv
	$(BIN)/ruff check .

bench: venv
	$(BIN)/python -m routes.bench --routes 100000

clean:
	rm -rf $(VENV) build *.egg-info
