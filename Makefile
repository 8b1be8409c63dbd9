# Loom: one command to run, one to test, on a fresh machine (Python 3.11+ and make).
#   make run    set up .venv, copy the example inputs to input/, serve Loom on http://127.0.0.1:8188
#               (ARGS="--frontend comfyui" also installs and serves ComfyUI's official frontend)
#   make test   set up .venv with the test extras and run the test suite
#   make bench  run the benchmarks (JSON on stdout)
# The editor's browser tests drive Debian's chromium (/usr/bin/chromium): make test installs it with apt-get
# when it can (root or passwordless sudo) and the tests skip, saying so, where it cannot.
# TORCH: the torch requirement. The CPU build of 2.13.0 is the default; on a GPU machine install
# your CUDA build of torch into .venv first, or pass e.g. TORCH="torch==2.13.0 --index-url URL" (pip words).
# CONSTRAINTS: every pip install here takes the exact versions the test suite passed with from this file
# (torch left out, so a CUDA build installed first is kept). `make lock` refreshes it; CONSTRAINTS= installs
# the newest releases pyproject.toml allows instead (e.g. for a torch other than 2.13.0 whose pins clash).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
ARGS   ?=
CONSTRAINTS ?= constraints.txt
PIP_INSTALL = $(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: setup setup-test chromium run inputs test test-all bench lint lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip

# The graph editor's npm packages (frontend/package-lock.json), reinstalled when the lock changes.
# Without npm the server still runs; / then says the editor is not installed.
FRONTEND_STAMP := frontend/node_modules/.package-lock.json

$(FRONTEND_STAMP): frontend/package.json frontend/package-lock.json
	@if command -v npm >/dev/null; then npm ci --prefix frontend && touch $@; \
	else echo "npm not found: the graph editor (frontend/) is not installed"; fi

# spandrel runs the upscale models (engine/models/upscale.py); installed --no-deps: its torchvision requirement
# would pull another torch (it is stood in for while spandrel imports); its other requirements are ours.
setup: $(BIN)/python $(FRONTEND_STAMP)
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP_INSTALL) $(TORCH)
	$(PIP_INSTALL) -e .
	$(BIN)/python -m pip install -q --no-deps spandrel==0.4.2

# k-diffusion is a test-only reference for the samplers (tests/support/kdiffusion.py loads its sampling.py alone):
# installed without its training stack (torchvision, CLIP, wandb, ...), which would also pull another torch.
setup-test: setup chromium
	$(PIP_INSTALL) -e '.[test,cluster,comfyui-frontend]'
	$(BIN)/python -m pip install -q --no-deps k-diffusion==0.1.1.post1

# Refresh constraints.txt: a throwaway venv resolves the newest releases pyproject.toml allows (no constraints)
# and pip freeze writes them out under the file's comment lines, less torch (TORCH's or the user's build, see
# the file) and this project. Then run `make test` (it installs the new pins); commit the file when it passes.
lock:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp/venv" && \
	"$$tmp/venv/bin/python" -m pip install -q --upgrade pip && \
	"$$tmp/venv/bin/python" -m pip install -q $(TORCH) && \
	"$$tmp/venv/bin/python" -m pip install -q -e '.[test,cluster,comfyui-frontend]' && \
	{ grep '^#' constraints.txt; "$$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | \
	  grep -v -i -E '^(torch|setuptools|wheel)(==| @)'; } > "$$tmp/constraints.txt" && \
	mv "$$tmp/constraints.txt" constraints.txt && echo "constraints.txt: $$(grep -c '==' constraints.txt) pins"

# Debian's chromium for the browser tests; never a downloaded browser. Soft: a failure only skips those tests.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
chromium:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && \
	  { $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { $(SUDO) apt-get update -q >/dev/null 2>&1 && $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium not installed (needs apt-get as root or sudo): the editor's browser tests will be skipped"

run: setup inputs
	$(if $(findstring comfyui,$(ARGS)),$(PIP_INSTALL) -e '.[comfyui-frontend]')
	$(BIN)/python main.py $(ARGS)

# The example workflows' input images and datasets (workflows/inputs, subfolders included) in Loom's input
# folder; existing files are kept.
inputs:
	mkdir -p input
	cp -rn workflows/inputs/. input/

# Static checks: style, the layer contracts (docs/architecture.md), types, and the editor's JSDoc types.
lint: setup-test
	$(BIN)/python -m ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m mypy
	@if [ -x frontend/node_modules/.bin/tsc ]; then npm run --silent --prefix frontend typecheck && echo "editor type check (tsc --noEmit): no errors"; \
	else echo "typescript not installed (needs npm): the editor's type check is skipped"; fi

test: lint
	$(BIN)/python -m pytest -q -rs $(ARGS)

test-all: setup-test
	$(BIN)/python -m pytest -q -m "" $(ARGS)

bench: setup-test
	$(BIN)/python bench/executor.py

# A seeded fuzzing campaign (tests/fuzz/campaign.py): 20,000 requests against a real server on loopback, then
# 20,000 against one with an auth token; prints the status counts as JSON and fails on any 5xx, timeout or dead
# server. ARGS="--seed N --requests N".
.PHONY: fuzz
fuzz: setup-test
	$(BIN)/python -m tests.fuzz.campaign $(ARGS)
	$(BIN)/python -m tests.fuzz.campaign --auth $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
