# sparse-recon: `make demo` (install + fit the shared fox capture) and `make test` (install + whole suite).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data
DEMO_OUT ?= runs/fox-demo
DEMO_ITERS ?= 1000

.PHONY: install demo demo-ct test test-fast test-minkowski bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@if command -v apt-get >/dev/null && ! ldconfig -p | grep -q libusb-1.0.so.0; then \
	  echo "installing Debian package libusb-1.0-0 (open3d needs it)"; \
	  (apt-get update -qq && apt-get install -y -qq libusb-1.0-0) >/dev/null || \
	  echo "warning: could not install libusb-1.0-0; open3d will not import"; fi
	@if command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then \
	  echo "installing Debian package chromium (the web viewer's browser tests drive it through playwright)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null || \
	  echo "warning: could not install chromium; the viewer's browser tests will be skipped"; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: install
	$(VENV)/bin/recon fit $(DATA)/object/fox --train-views 8 --eval-views 8 --downscale 4 \
	  --iterations $(DEMO_ITERS) --out $(DEMO_OUT) --overwrite

test: install
	$(PY) -m pytest -q -p no:cacheprovider --timeout 1200

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# MinkowskiEngine parity (~27 min build on 2 cores; not part of CI: docs/testing.md)
test-minkowski: install
	$(PY) -c "import MinkowskiEngine" 2>/dev/null || bash scripts/install_minkowski.sh
	$(PY) -m pytest -q -m minkowski

bench: install
	$(PY) scripts/bench_raster.py

clean:
	rm -rf runs .pytest_cache
