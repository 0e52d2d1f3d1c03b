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

# The MLflow UI over this checkout's runs (tracking.uri of params.yaml), on the loopback interface
# only: http://127.0.0.1:5000 (PORT=... for another port, TRACKING_URI=... for another store).
# The experiments are tagged mlflow.experimentKind=custom_model_development (ipguard.tracking).
TRACKING_URI ?= sqlite:///mlflow.db
PORT ?= 5000
ui: env
	@echo "MLflow UI: http://127.0.0.1:$(PORT)/#/experiments?workflowType=machine_learning (the runs; without the parameter MLflow 3 opens on its GenAI overview)"
	@$(ACTIVATE) && exec mlflow ui --backend-store-uri $(TRACKING_URI) --host 127.0.0.1 --port $(PORT) --workers 1

clean:
	rm -rf $(VENV) .pytest_cache
