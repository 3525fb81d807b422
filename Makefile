# Two entry points for a newcomer: `make study` (the main job) and `make test`.
# Each creates .venv on first use and installs what it needs; PyTorch is installed as the
# pinned CPU build only when the interpreter has none.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_CPU := torch==2.13.0

.PHONY: study test lint install

$(BIN)/medrobust: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_CPU)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/medrobust

install: $(BIN)/medrobust

study: install
	$(BIN)/medrobust study $(CONFIG)

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
