# Two commands on a fresh machine: `make demo` (install + embedded demo) and `make test` (install + tests).
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
# detectron2 (not on PyPI): its wheel, when ../shared/wheels (beside this repository) holds one.
DETECTRON2_WHEEL = $(lastword $(sort $(wildcard $(dir $(abspath $(lastword $(MAKEFILE_LIST))))../shared/wheels/detectron2-*.whl)))

.PHONY: install browser demo lint test bench gpu-check work-pool deploy
install: $(VENV)/.installed

# torch and torchvision first, pinned as a pair (a torchvision built for another torch fails to import);
# on this project's machines pip takes both from local disk.
$(VENV)/.installed: pyproject.toml $(DETECTRON2_WHEEL)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test,vision,diffusion,video,metrics]'
	$(if $(DETECTRON2_WHEEL),$(BIN)/python -m pip install -q '$(DETECTRON2_WHEEL)' -e '.[detectron2]',\
	  @echo "no detectron2 wheel in ../shared/wheels: perception=detectron2 is unavailable (its tests skip)")
	touch $@

# the datasets, then every model trained, evaluated and retrained on them; DEMO_FLAGS=--no-models: datasets only
demo: install
	$(BIN)/hoi-factory demo $(DEMO_FLAGS)

# Debian's chromium, for the report-page test (skipped, with its reason, where it cannot be installed).
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; \
	} || echo "chromium could not be installed: the report-page test will be skipped"

# ruff: lint and import order (configured in pyproject.toml).
lint: install
	$(BIN)/ruff check .

test: install browser lint
	$(BIN)/python -m pytest

# Every benchmark, each interleaved and repeated (--repeats 3), into benchmarks/results/*.json; on an idle
# machine (other load skews the wall-time ones): about 20 minutes on 2 cores. gpu-check is separate.
bench: install
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.pools
	$(BIN)/python -m benchmarks.fixed_cost
	$(BIN)/python -m benchmarks.chorus_aggregation
	$(BIN)/python -m benchmarks.ho3pairs
	$(BIN)/python -m benchmarks.hogsa_render
	$(BIN)/python -m benchmarks.hogsa
	$(BIN)/python -m benchmarks.memory
	$(BIN)/python -m benchmarks.loader
	$(BIN)/python -m benchmarks.scale

# The deployments of infra/prefect.yaml on the Prefect server of PREFECT_API_URL (a fresh one too): the process
# work pool they run on first (kept if it exists), then every deployment. Start a worker to run them:
# `prefect worker start --pool hoi-factory`. No `install` prerequisite: the compose worker's image has no venv.
PREFECT ?= $(if $(wildcard $(BIN)/prefect),$(BIN)/prefect,prefect)
WORK_POOL ?= hoi-factory
PREFECT_FILE ?= infra/prefect.yaml
work-pool:
	$(PREFECT) work-pool inspect $(WORK_POOL) >/dev/null 2>&1 || $(PREFECT) work-pool create $(WORK_POOL) --type process

deploy: work-pool
	@test -n "$$HOI_STORE_URL" || { echo "set HOI_STORE_URL: deployments tag their runs with the store"; exit 1; }
	$(PREFECT) --no-prompt deploy --all --prefect-file $(PREFECT_FILE)

# By hand on a machine with one CUDA GPU (under 8 minutes): gsplat parity, HOGSA, text-to-image, detection and
# CHORUS aggregation speed, as one JSON object on stdout and in benchmarks/results/gpu_check.json.
# gsplat is the [gsplat] extra: without it the parity check is skipped and HOGSA renders with the torch rasterizer.
gpu-check: install
	$(BIN)/python -m benchmarks.gpu_check
