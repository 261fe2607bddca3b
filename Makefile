# Two commands on a fresh machine (Python 3.11):
#   make demo   install, train the default CNN on the built-in digits, export FP32 + INT8, profile them
#   make test   install with the test tools and run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= models/digits

.PHONY: demo test install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e ".[cpu,train]"

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e ".[cpu,train,dev,ray]"

demo: install
	$(BIN)/edgecnn train --out $(MODEL)
	$(BIN)/edgecnn export $(MODEL) --quantize int8
	$(BIN)/edgecnn profile $(MODEL)/model.onnx $(MODEL)/model.int8.onnx --batch-sizes 1,8,32 --json $(MODEL)/profile.json --plot $(MODEL)/profile.png

test: install-dev
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
