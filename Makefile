# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-output

.PHONY: demo test lint setup bench clean

setup: $(STAMP)

# torch first and pinned: on the project's machines this version is a CPU build on local disk;
# elsewhere pip takes the registry build. Then the package with its dev extras.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/visionllm data shapes --out $(DEMO_DIR)/shapesworld --train 16 --val 8 --size 128 --seed 0 \
		--contact-sheet $(DEMO_DIR)/contact_sheet.png

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/shapes_speed.py --out docs/benchmarks/shapes_speed.json

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
