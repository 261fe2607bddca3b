# Two commands on a fresh machine (Python 3.11):
#   make demo   install, train the default CNN on the built-in digits, export FP32 + INT8, profile them,
#               and write the HTML report
#   make test   install with the test tools (and, as root with apt-get, Debian's chromium for the
#               browser tests), lint (ruff check + format --check) and run the test suite (what CI runs)
#   make test-arm64  as root: the device path (verify, predict, profile, serve, tune) in an emulated
#               arm64 Debian (debootstrap + qemu-user-static via binfmt_misc, cached under ~/.cache);
#               functional only (CI runs it after make test)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= models/digits

.PHONY: demo test test-arm64 lint install install-dev chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e ".[cpu,train]"

install-dev: $(BIN)/python chromium
	$(BIN)/pip install -q -e ".[cpu,uvloop,train,dev,openvino,ray]"

# The browser tests drive Debian's chromium (never a downloaded browser). Installed only when it is
# missing and we are root with apt-get; elsewhere those tests skip and say why.
chromium:
	@if [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the browser tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
			|| echo "could not install chromium: the browser tests will skip"; \
	else echo "no chromium (and not root with apt-get): the browser tests will skip"; fi

demo: install
	$(BIN)/edgecnn train --out $(MODEL)
	$(BIN)/edgecnn export $(MODEL) --quantize int8
	$(BIN)/edgecnn profile $(MODEL)/model.onnx $(MODEL)/model.int8.onnx --batch-sizes 1,8,32 --op-profile --json $(MODEL)/profile.json --plot $(MODEL)/profile.svg
	$(BIN)/edgecnn report $(MODEL)

# ruff: lint and format (pinned in the dev extra, so every machine formats alike)
lint: install-dev
	$(BIN)/ruff check edgecnn tests tools
	$(BIN)/ruff format --check edgecnn tests tools

test: install-dev lint
	$(BIN)/python -m pytest -q

# A model trained and exported here; edgecnn[cpu] from this checkout installed in the arm64 root.
test-arm64: install-dev
	$(BIN)/python tools/arm64/check.py --edgecnn $(BIN)/edgecnn

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
