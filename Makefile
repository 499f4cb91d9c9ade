# Two commands for a newcomer: `make demo` (the main job on built-in data) and `make test`.
# torch is installed first and pinned: the CPU build of 2.13.0 lies on this machine's disk, and
# an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean chromium tcmalloc

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP) tcmalloc

# `ldseg train`, `predict` and `robustness` run on tcmalloc when it is installed
# (src/ldseg/allocator.py says why): Debian's libtcmalloc-minimal4, a 300 kB library. Best
# effort: as root or through sudo without a password prompt; without it they run on glibc's
# malloc, slower at large grids.
tcmalloc:
	@/sbin/ldconfig -p 2>/dev/null | grep -q libtcmalloc || { S=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
		$$S apt-get update -q && $$S apt-get install -y -q libtcmalloc-minimal4; } \
		|| echo "ldseg: tcmalloc not installed; ldseg runs on glibc's malloc"

demo: setup
	$(VENV)/bin/ldseg demo -o demo_output/$$(date +%Y%m%d-%H%M%S)

# The report tests open reports in Debian's headless Chromium (Playwright drives it; no
# browser download).
chromium:
	@command -v chromium >/dev/null || { S=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$S apt-get update -q && $$S apt-get install -y -q chromium; }

test: $(STAMP) chromium tcmalloc
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo_output .pytest_cache
