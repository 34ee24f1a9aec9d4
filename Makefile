# Two commands for a fresh machine: `make demo` and `make test`. Both build their own virtual
# environment from constraints.txt (the one lock file) and fetch Fashion-MNIST through Debian when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION_DIR := /usr/share/datasets/fashion-mnist
RUN_DIR ?= runs/demo

.PHONY: venv data demo test lint clean tiny-model

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[train,viz,native,dev]'
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

demo: venv data
	$(PY) -m train fit --dataset fashion-mnist --epochs 5 --run-dir $(RUN_DIR) --out $(RUN_DIR)/model
	$(VENV)/bin/vae-infer info $(RUN_DIR)/model
	$(VENV)/bin/vae-infer sample $(RUN_DIR)/model -n 64 --seed 0 --out $(RUN_DIR)/samples.npy --png $(RUN_DIR)/samples.png
	@echo "Demo finished: pictures, figures and the model package are in $(RUN_DIR)/"

test: venv data
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .

# Rebuild the small model package the runtime tests use (committed under tests/fixtures/).
tiny-model: venv data
	$(PY) tests/fixtures/make_tiny_model.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs
