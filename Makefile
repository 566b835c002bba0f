# The README's commands. Each one bootstraps what it needs first (idempotent, seconds when warm).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: run test lint bench stack-down

# `make run` is a local trial: everyone who signs up gets into the queue, unless you run
# `REQUIRE_PAYMENT=true make run` (then people pay in the local Stripe emulator it starts).
run: export REQUIRE_PAYMENT ?= false
run:  ## install what is missing, start the local stack, serve on http://127.0.0.1:8080
	@deploy/bootstrap.sh run
	@$(PY) -m server run

# The suite mostly waits (timers, sockets, browsers), so two workers, each with its own services,
# halve the wall time on two cores. Whole files go to one worker: a file's nodes are shared.
TEST_WORKERS ?= 2
test:  ## the whole suite against throwaway real services
	@deploy/bootstrap.sh test
	@$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench:  ## measurements that print numbers against an in-run baseline (not part of make test)
	@deploy/bootstrap.sh test
	@$(PY) -m pytest -p tests.conftest -p tests.multinode.conftest bench/test_signaling_latency.py -q -s
	@$(PY) bench/media_upload_memory.py
	@$(PY) bench/webhook_latency.py
	@$(PY) bench/writer_poll.py
	@$(PY) bench/run.py $(BENCH_ARGS)

lint:
	@deploy/bootstrap.sh test
	$(VENV)/bin/ruff check server tests bench
	$(VENV)/bin/mypy server

stack-down:  ## stop services left running by `python -m server stack up`
	@$(PY) -m server stack down
