# tandem: `make run` starts the whole system locally, `make test` runs every test.
# Both set up what is missing first: the virtualenv, the Python packages, and (for tests)
# the Debian packages of the real peers and tools the tests drive.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
CONFIG ?= examples/tandem.yaml
PYTEST_ARGS ?=

# command or file that proves a package is there : the Debian package. The machine image's
# kubectl (1.27 or later) is kept when present: Debian's 1.20 cannot render kustomize v5
# overlays, and tests/deploy says so if that is the one installed.
SYSTEM_DEPS := \
	/usr/bin/sipp:sip-tester \
	/usr/sbin/kamailio:kamailio \
	/usr/bin/go:golang-go \
	/usr/share/gocode/src/github.com/Masterminds/sprig:golang-github-masterminds-sprig-dev \
	/usr/bin/kubectl:kubernetes-client \
	/usr/sbin/dnsmasq:dnsmasq-base

.PHONY: run test lint format bench demo proto clean venv system-deps

run: venv
	$(BIN)/tandem up --config $(CONFIG)

test: venv system-deps lint
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
	tests.bench.bench_calls
bench: venv system-deps
	@for m in $(BENCHES); do echo "== $$m"; $(BIN)/python -m $$m || exit 1; done

clean:
	rm -rf .tandem build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +
