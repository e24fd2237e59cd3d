# Every target creates or reuses the virtual environment first (scripts/env.sh).
VENV = $(shell bash scripts/env.sh)
PY = $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test bench env
env:
	@bash scripts/env.sh

demo:
	@$(PY) -m nnsight_vla.cli demo $(ARGS)

test:
	@$(PY) -m pytest -n 2 $(ARGS)

bench:
	@$(PY) benchmarks/steering_overhead.py
