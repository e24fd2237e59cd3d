# Each target first creates or reuses the environment: scripts/env.sh prints the path of this
# checkout's venv (.venv: this checkout's code, editable, over the shared heavy venv).
ENV = venv=$$(bash scripts/env.sh) && export HF_HUB_OFFLINE=1 &&

.PHONY: env demo test bench notebooks
env:
	@bash scripts/env.sh

demo:
	@$(ENV) $$venv/bin/python examples/demo.py $(ARGS)

test:
	@$(ENV) $$venv/bin/python -m pytest -n 2 $(ARGS)

bench:
	@$(ENV) $$venv/bin/python benchmarks/steering_overhead.py $(ARGS)

notebooks:
	@$(ENV) $$venv/bin/python scripts/make_notebooks.py
