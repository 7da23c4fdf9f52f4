# A thin front for nox: every target calls one nox session. `make` alone lists them.
# The first run builds .venv-tools (pinned nox + uv from requirements-tools.txt) with
# the machine's python3; nothing else needs to be installed by hand.
.DEFAULT_GOAL := help
SHELL := /bin/bash

# The machine's python3 builds the tool venv (nox, uv). PYTHON=/path/to/python on the
# command line runs the commands in an environment layered on that interpreter instead:
# its TensorFlow, TFDS and packages are the ones tested (built once; see noxfile.py).
TOOLS_PYTHON ?= python3
ifeq ($(origin PYTHON),command line)
export DLCKPT_PYTHON := $(PYTHON)
endif
TOOLS := .venv-tools
NOX := $(TOOLS)/bin/nox
ARGS ?=
# nox finds uv on PATH; no interpreter is ever downloaded.
export PATH := $(CURDIR)/$(TOOLS)/bin:$(PATH)
export UV_PYTHON_DOWNLOADS := never

$(NOX): requirements-tools.txt
	$(TOOLS_PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-tools.txt
	touch $(NOX)

.PHONY: help  ## Show this list
help:
	@echo "Usage: make TARGET [ARGS=\"--config-name=NAME key=value ...\"]"
	@grep -E '^\.PHONY: [a-z-]+ +## ' $(MAKEFILE_LIST) | sed -E 's/^\.PHONY: ([a-z-]+) +## /  \1|/' | column -t -s '|'

.PHONY: small-buffer  ## Small-buffer test: size estimates + checkpoint round trip (main job)
small-buffer: $(NOX)
	$(NOX) -s small_buffer -- $(ARGS)

.PHONY: local-staging  ## Save into LOCAL_STAGING_DIR (default .work/local-staging), upload if GCS_TEST_BUCKET
local-staging: $(NOX)
	$(NOX) -s local_staging -- $(ARGS)

.PHONY: original  ## Original full-buffer test under TensorFlow's temp folder (TMPDIR=... to move it)
original: $(NOX)
	$(NOX) -s original -- $(ARGS)

.PHONY: strategies  ## Compare shuffle strategies side by side: checkpoint size, speed, quality, exact resume
strategies: $(NOX)
	$(NOX) -s strategies -- $(ARGS)

.PHONY: estimate  ## Measured checkpoint size + where the bytes go, no round trip (ARGS="--fit-budget 15GB")
estimate: $(NOX)
	$(NOX) -s estimate -- $(ARGS)

.PHONY: multi-host  ## Every process of a multi-host job saved at once, restored, compared (ARGS="--hosts 2 --processes-per-host 2")
multi-host: $(NOX)
	$(NOX) -s multi_host -- $(ARGS)

.PHONY: launch-ranks  ## multi-host --launcher on this machine, ranks started as torchrun starts them (ARGS="--ranks 2 --config-name small")
launch-ranks: $(NOX)
	$(NOX) -s launch_ranks -- $(ARGS)

.PHONY: diagnose  ## Why "Could not append to the internal temporary file" on this host (ARGS="TMPDIR=/x")
diagnose: $(NOX)
	$(NOX) -s diagnose -- $(ARGS)

.PHONY: disk-check  ## Free space of TF's temp folder, /tmp, LOCAL_STAGING_DIR, home, cwd and RAM
disk-check: $(NOX)
	$(NOX) -s disk_check -- $(ARGS)

.PHONY: bench  ## Benchmarks: save/transfer vs raw limits, scaling plot, estimator, catch rate (slow)
bench: $(NOX)
	$(NOX) -s bench -- $(ARGS)

.PHONY: test  ## Run the test suite
test: $(NOX)
	$(NOX) -s tests -- $(ARGS)

.PHONY: test-accuracy  ## The estimator against real saves at 20x-100x its calibration (CI runs it)
test-accuracy: $(NOX)
	$(NOX) -s test_accuracy -- $(ARGS)

.PHONY: test-tf-versions  ## Core tests on the oldest TensorFlow; the tool in users' own environments
test-tf-versions: $(NOX)
	$(NOX) -s tf_versions -- $(ARGS)

.PHONY: lint  ## ruff, mypy, shellcheck
lint: $(NOX)
	$(NOX) -s lint

.PHONY: lock  ## Re-resolve uv.lock after editing pyproject.toml
lock: $(NOX)
	$(NOX) -s lock

.PHONY: clean  ## Remove the tool venv, nox environments and the work folder
clean:
	rm -rf $(TOOLS) .nox .work
