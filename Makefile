# The two commands of the README: `make demo` and `make test`. Both do all setup themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo ca-server test unit e2e lint venv clean bench-webhook bench-agent

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "certlc needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

# Azurite (the Azure Storage emulator) for the queue, pinned in package-lock.json.
node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq nodejs npm; } || \
		{ echo "certlc needs Node.js and npm for Azurite: sudo apt-get install nodejs npm"; exit 1; }
	npm ci --no-audit --no-fund --silent
	@touch $@

# CA=devca|adcs-web|cfssl|acme picks the CA the renewals go to (one value; see README).
CA ?= devca
demo: venv node_modules/.installed ca-server
	$(BIN)/certlc demo --ca $(CA)

# The CA server CA= needs (Pebble for acme, cfssl for cfssl), from apt when run as root on Debian.
ca-server:
	@case "$(CA)" in acme) pkg=pebble; bin=pebble;; cfssl) pkg=golang-cfssl; bin=cfssl;; *) exit 0;; esac; \
	command -v $$bin >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && apt-get install -y -qq $$pkg; } || \
		{ echo "certlc: make demo CA=$(CA) needs $$bin: sudo apt-get install $$pkg"; exit 1; }

# Kerberos (the adcs-web connector's negotiate/kerberos auth on Linux): python-gssapi and pykrb5 have no
# Linux wheels, so pip builds them; that needs libkrb5-dev and a C compiler (installed with apt when run
# as root on Debian). Only the tests need it; without it their Kerberos part is skipped (not as root).
$(VENV)/.kerberos: $(VENV)/.installed
	@command -v krb5-config >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libkrb5-dev gcc; } || true
	@$(BIN)/pip install --quiet -e '.[test,kerberos]' && touch $@ || \
		echo "certlc: the kerberos extra did not build (needs libkrb5-dev and a C compiler); its tests skip"

test: venv $(VENV)/.kerberos node_modules/.installed
	$(BIN)/ruff check .
	$(BIN)/pytest

unit: venv
	$(BIN)/pytest tests/unit

e2e: venv $(VENV)/.kerberos node_modules/.installed
	$(BIN)/pytest tests/e2e

lint: venv
	$(BIN)/ruff check .

# Throughput and latency of the webhook receiver on loopback (a benchmark, not a test; a few minutes).
bench-webhook: venv node_modules/.installed
	$(BIN)/python -m bench.webhook $(BENCH_ARGS)

# Requests and CPU per polling interval of `certlc agent` for 100 certificates on the emulator (about 2 minutes).
bench-agent: venv
	$(BIN)/python -m bench.agent $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .certlc .pytest_cache test-artifacts node_modules
