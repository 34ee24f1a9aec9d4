# Two commands for a fresh machine: `make demo` and `make test`. Both build their own virtual
# environment from constraints.txt (the one lock file) and fetch Fashion-MNIST through Debian when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION_DIR := /usr/share/datasets/fashion-mnist
RUN_DIR ?= runs/demo

# Debian packages the tests need, by the command (or file) that shows each one is there:
#   chromium: the explorer page in a real browser; wrk: the server benchmark;
#   cross compilers, their C libraries and qemu: the C path's edge targets under emulation.
SYSTEM_PACKAGES := dataset-fashion-mnist:$(FASHION_DIR)/train-images-idx3-ubyte.gz \
	chromium:/usr/bin/chromium wrk:/usr/bin/wrk \
	gcc-aarch64-linux-gnu:/usr/bin/aarch64-linux-gnu-gcc libc6-dev-arm64-cross:/usr/aarch64-linux-gnu/include/stdio.h \
	gcc-arm-linux-gnueabihf:/usr/bin/arm-linux-gnueabihf-gcc libc6-dev-armhf-cross:/usr/arm-linux-gnueabihf/include/stdio.h \
	qemu-user:/usr/bin/qemu-aarch64 \
	gcc-arm-none-eabi:/usr/bin/arm-none-eabi-gcc libnewlib-arm-none-eabi:/usr/lib/arm-none-eabi/newlib \
	qemu-system-arm:/usr/bin/qemu-system-arm
WEB_DIR := vae_infer/serve/web

.PHONY: venv data system-deps web demo test test-fast docs lint typecheck clean tiny-model

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[train,viz,native,parquet,ray,serve,images,docs,dev]'
	touch $@

# The real data set: Debian's package when apt-get is there and no data directory already holds it.
data:
	@if [ -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ] || [ -n "$$VAE_DATA_DIR" ]; then \
	  echo "Fashion-MNIST: found"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST not installed and no apt-get: python -m train will download it from its mirrors"; \
	fi

# Every system package the tests need, installed with apt-get where it is missing (only the missing ones;
# --no-install-recommends: the recommended extras of the cross toolchains are hundreds of MB).
system-deps:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do \
	  pkg=$${entry%%:*}; path=$${entry#*:}; [ -e "$$path" ] || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then echo "system packages: all present"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing:$$missing"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "missing system packages (no apt-get here; tests that need them are skipped):$$missing"; fi

# onnxruntime-web for the explorer page, from npm with the committed lock file (never from a CDN), and the page
# tests' own tools (axe-core) in tests/web, apart from what the server serves.
WEB_TEST_DIR := tests/web
web:
	@if command -v npm >/dev/null 2>&1; then \
	  for dir in $(WEB_DIR) $(WEB_TEST_DIR); do \
	    (cd $$dir && npm ci --no-audit --no-fund --loglevel=error) || exit 1; \
	  done; \
	else echo "npm missing: the page decodes through the API, and its browser tests cannot run"; fi

demo: venv data web
	$(PY) -m train fit --dataset fashion-mnist --epochs 5 --run-dir $(RUN_DIR) --out $(RUN_DIR)/model
	$(VENV)/bin/vae-infer info $(RUN_DIR)/model
	$(VENV)/bin/vae-infer sample $(RUN_DIR)/model -n 64 --seed 0 --out $(RUN_DIR)/samples.npy --png $(RUN_DIR)/samples.png
	@echo "Demo finished: pictures, figures and the model package are in $(RUN_DIR)/"
	@echo "Explore the shipped model in a browser:  $(VENV)/bin/vae-infer serve models/fashion-mnist  then open http://127.0.0.1:8000/"

test: venv system-deps web docs
	$(VENV)/bin/ruff check .
	$(MAKE) --no-print-directory typecheck
	$(PY) -m pytest -q

# The quick loop: everything not marked slow (what trains, compiles C, serves, runs Ray, a browser or an emulator,
# loops over subprocesses or generated examples). tests/conftest.py marks by rule every test that uses a slow
# fixture or runs a Debian program, and fails any run (this one too) that leaves a file in the checkout.
# Bytecode caching on (PYTHONDONTWRITEBYTECODE emptied): re-parsing every test module costs seconds per run.
test-fast: venv
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -q -m "not slow"

# The docs site, into site/: a broken link, reference or page fails the build (--strict).
docs: venv
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

lint: venv
	$(VENV)/bin/ruff check .

# mypy on vae_infer, configured in pyproject.toml ([tool.mypy]: its mode and the untyped third-party packages).
typecheck: venv
	$(VENV)/bin/mypy

# Rebuild the small model package the runtime tests use (committed under tests/fixtures/).
tiny-model: venv data
	$(PY) tests/fixtures/make_tiny_model.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs site
