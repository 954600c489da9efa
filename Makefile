# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-output

DEFAULT_MODEL := checkpoints/visionllm-v1-tiny
V2_MODEL := checkpoints/visionllm-v2-tiny

.PHONY: demo test lint setup bench clean train-default train-v2 serve browser

setup: $(STAMP)

# torch first and pinned: on the project's machines this version is a CPU build on local disk;
# elsewhere pip takes the registry build. Then the package with its dev extras.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Runs the shipped models on new ShapesWorld images: the default (v1) for every v1 task, then the tiny v2 model for
# every task it answers (its pictures in $(DEMO_DIR)/v2).
demo: $(STAMP)
	$(VENV)/bin/visionllm demo --model $(DEFAULT_MODEL) --out $(DEMO_DIR)
	$(VENV)/bin/visionllm demo --model $(V2_MODEL) --out $(DEMO_DIR)/v2

# Trains the shipped default model: stage 1 (the image tokenizer alone), then stage 2 (every v1 task), each resumable
# from its last checkpoint; then writes it in fp16 to $(DEFAULT_MODEL). About 1 h 50 min on 2 CPU cores (budget 2.5 h).
train-default: $(STAMP)
	$(VENV)/bin/visionllm train --config configs/tiny_stage1.yaml --resume
	$(VENV)/bin/visionllm train --config configs/tiny_stage2.yaml --resume
	$(VENV)/bin/visionllm export runs/tiny-stage2/final $(DEFAULT_MODEL) --dtype fp16

# Trains the shipped v2 model: stage 1 (the chat model; its image encoder starts from $(DEFAULT_MODEL)'s ResNet),
# stage 2 (the perception decoders attached, every task; the object decoder starts from $(DEFAULT_MODEL)'s
# detector), stage 3 (those decoders alone), stage 4 (the generation and editing decoders attached, with the LLM),
# stage 5 (those decoders alone), each resumable from its last checkpoint; then writes it in fp16 to $(V2_MODEL).
# About 1 h 50 min for stages 1-3 and 70 min for stages 4-5 (10 + about 60) on 2 CPU cores (docs/v2.md).
train-v2: $(STAMP)
	$(VENV)/bin/visionllm train --config configs/tiny_v2_stage1.yaml --resume
	$(VENV)/bin/visionllm train --config configs/tiny_v2_stage2.yaml --resume
	$(VENV)/bin/visionllm train --config configs/tiny_v2_stage3.yaml --resume
	$(VENV)/bin/visionllm train --config configs/tiny_v2_stage4.yaml --resume
	$(VENV)/bin/visionllm train --config configs/tiny_v2_stage5.yaml --resume
	$(VENV)/bin/visionllm export runs/tiny-v2-stage5/final $(V2_MODEL) --dtype fp16

# The web page's test drives Debian's Chromium through Playwright (no browser download): install it when
# missing (as root, or through sudo).
CHROMIUM ?= /usr/bin/chromium
browser: $(CHROMIUM)
$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "install Chromium and set CHROMIUM=/path/to/chromium"; exit 1; }
	@if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	$$sudo apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		{ $$sudo apt-get update -q >/dev/null && $$sudo apt-get install -y -q chromium chromium-driver >/dev/null; }
	@test -x $(CHROMIUM)

# Serves the shipped model: web page and OpenAI-compatible API on http://127.0.0.1:8000/
serve: $(STAMP)
	$(VENV)/bin/visionllm serve --model $(DEFAULT_MODEL)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: $(STAMP) $(CHROMIUM)
	$(PY) -m ruff check .
	CHROMIUM=$(CHROMIUM) $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/shapes_speed.py --out docs/benchmarks/shapes_speed.json

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache test-artifacts
