# make repro: build the environment if needed, then run the pipeline (dvc repro) on params.yaml.
# make test:  build the environment if needed, then the test suite.
SHELL := /bin/bash
VENV := .venv
ACTIVATE := source $(VENV)/bin/activate
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: env repro test test-all params ui clean

env:
	@scripts/bootstrap-env

repro: env
	@$(ACTIVATE) && time dvc repro

test: env
	@$(ACTIVATE) && python -m pytest $(PYTEST_ARGS)

test-all: env
	@$(ACTIVATE) && python -m pytest -m "slow or not slow" $(PYTEST_ARGS)

# Recompose params.yaml from conf/ (what `dvc exp run` does); EXPERIMENT=name picks an overlay.
params: env
	@$(ACTIVATE) && python -m ipguard.config compose $(if $(EXPERIMENT),experiment=$(EXPERIMENT)) > params.yaml.new && mv params.yaml.new params.yaml

# The MLflow UI over this checkout's runs, on the loopback interface only.
ui: env
	@$(ACTIVATE) && mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $${PORT:-5000}

clean:
	rm -rf $(VENV) .pytest_cache
