# sparse-recon: `make demo` (install + fit the sample capture in data/) and `make test` (install + whole suite).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_ITERS ?= 600

.PHONY: install install-test demo demo-ct test test-fast test-minkowski bench clean

# the libusb that open3d needs, the virtual environment, a current pip
define VENV_SETUP
	@if command -v apt-get >/dev/null && ! ldconfig -p | grep -q libusb-1.0.so.0; then \
	  echo "installing Debian package libusb-1.0-0 (open3d needs it)"; \
	  (apt-get update -qq && apt-get install -y -qq libusb-1.0-0) >/dev/null || \
	  echo "warning: could not install libusb-1.0-0; open3d will not import"; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
endef

# the package and what it needs to run
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(VENV_SETUP)
	$(PY) -m pip install -q -e .
	touch $@

# + the test tools: pytest, playwright, Debian's chromium for the viewer's browser tests, and the
#   ray extra (recon batch --backend ray: tests/batch/test_ray.py starts a Ray head on loopback);
#   one pip run for the package and its extras (a second resolution of the whole tree costs a minute)
install-test: $(VENV)/.installed-test

$(VENV)/.installed-test: pyproject.toml
	$(VENV_SETUP)
	@if command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then \
	  echo "installing Debian package chromium (the web viewer's browser tests drive it through playwright)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null || \
	  echo "warning: could not install chromium; the viewer's browser tests will be skipped"; fi
	$(PY) -m pip install -q -e ".[test,ray]"
	touch $(VENV)/.installed $@

# 8 of the 16 sample photos (data/fox), scored on the other 8: 3 min 30 s on 2 cores from a fresh
# clone, install included (2026-12-04: training 79 s, eval PSNR 19.55 dB on the 8 held-out views, train 30.93)
demo: install
	$(VENV)/bin/recon fit data/fox --train-views 0 1 2 3 4 5 6 7 --eval-indices 8 9 10 11 12 13 14 15 \
	  --downscale 2 --iterations $(DEMO_ITERS) --out runs/fox-demo --overwrite

# a 25-view simulated cone-beam scan of the sample chest CT (data/ct), reconstructed with TV
demo-ct: install
	$(VENV)/bin/recon ct simulate data/ct/chest.npz --views 25 --out runs/ct-demo/scan --overwrite
	$(VENV)/bin/recon ct fit runs/ct-demo/scan --method tv --out runs/ct-demo/tv --overwrite

# Two phases: the bulk on 2 pytest-xdist workers with one thread each (small single-threaded
# tests pack two to a 2-core machine better than 2 threads each fighting for it), then the tests
# marked `serial` alone (a Ray head with 2 CPUs; a signal raced against a running job). First the
# numba kernels are compiled into numba's cache once, not by every test process side by side.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider --timeout 1200
test: install-test
	$(PY) scripts/warm_numba_cache.py
	@status=0; \
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1 $(PYTEST) -n 2 -m "not serial" --durations=25 || status=$$?; \
	$(PYTEST) -m serial --durations=5 || status=$$?; \
	exit $$status

test-fast: install-test
	$(PY) -m pytest -q -m "not slow"

# MinkowskiEngine parity (~27 min build on 2 cores; not part of CI: docs/testing.md)
test-minkowski: install-test
	$(PY) -c "import MinkowskiEngine" 2>/dev/null || bash scripts/install_minkowski.sh
	$(PY) -m pytest -q -m minkowski

bench: install
	$(PY) scripts/bench_raster.py

clean:
	rm -rf runs .pytest_cache
