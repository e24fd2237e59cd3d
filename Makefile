# Each target first creates or reuses the environment: scripts/env.sh prints the path of this
# checkout's venv (.venv: this checkout's code, editable, over the shared heavy venv).
ENV = venv=$$(bash scripts/env.sh) && export HF_HUB_OFFLINE=1 &&

.PHONY: env demo test test-fast bench notebooks gpu-check
env:
	@bash scripts/env.sh

demo:
	@$(ENV) $$venv/bin/python examples/demo.py $(ARGS)

# Two workers; a module whose fixtures are expensive (a model, a server, a simulator) is marked with
# xdist_group and runs on one worker, so its fixtures are built once. The 20 slowest tests are listed.
PYTEST = $$venv/bin/python -m pytest -n 2 --dist loadgroup --durations=20

# The tests marked `stacks` run last, alone (scripts/test.sh says why).
test:
	@$(ENV) bash scripts/test.sh $$venv/bin/python $(ARGS)

# The edit-test loop: everything not marked slow (see CONTRIBUTING.md for what that leaves out).
test-fast:
	@$(ENV) $(PYTEST) -m "not slow" $(ARGS)

bench:
	@$(ENV) $$venv/bin/python benchmarks/steering_overhead.py $(ARGS)

# Every CUDA path against the CPU, < 8 min on one GPU; writes runs/gpu-check.json (--out). Exits 2 without
# CUDA; ARGS="--device cpu ..." rehearses it on the CPU (see --help). Tests and CI never call it.
gpu-check:
	@$(ENV) $$venv/bin/python scripts/gpu_check.py $(ARGS)

notebooks:
	@$(ENV) $$venv/bin/python scripts/make_notebooks.py
