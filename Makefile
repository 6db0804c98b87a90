# The two commands a new user runs: `make demo` and `make test`. Everything else is set-up they call.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install kafka-jars demo test test-slow test-fast lint bench clean stop

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "recloop needs Python 3.11 ($(PYTHON) not found)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet --no-cache-dir -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

kafka-jars: install
	$(BIN)/recloop kafka fetch

demo: kafka-jars
	$(BIN)/recloop demo

# `make test`: every test but the long ones (~12 min on 2 cores); `make test-slow`: the long ones (marked
# `slow`: the quick evaluation, the 200k-event learner test, real-MiniLM and live-eval runs). CI runs both.
test: kafka-jars
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: kafka-jars
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not kafka and not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

stop:
	-$(BIN)/recloop kafka stop

clean: stop
	rm -rf .recloop .pytest_cache
