# Set-up on a fresh machine: `make demo` or `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
PYTEST_ARGS ?=

.PHONY: install demo test check lint bench clean

# The demo needs torch and the demo extras; the tests add the dev tools (timm, transformers, onnx, ...).
# pip compiles the installed files one by one; compileall does it afterwards on every core (pip skips the
# files that fail to compile, e.g. other Python versions' syntax in tests of dependencies; so does this).
INSTALL := $(PIP) install -q --no-compile -c constraints.txt
COMPILE := $(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null || true

$(DEMO_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(INSTALL) torch torchvision
	$(INSTALL) -e '.[demo]'
	$(COMPILE)
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	$(INSTALL) -e '.[dev,demo]'
	$(INSTALL) --no-deps foolbox
	$(COMPILE)
	touch $(STAMP)

install: $(STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/bit demo

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q $(PYTEST_ARGS)

check: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
