# Two set-up commands that work on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.udl-med-installed

.PHONY: demo test bench mutation clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/udl-med demo --out demo-out

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

bench: $(STAMP)
	for b in benchmarks/*.py; do case $$b in */mutation.py|*/noop_swaps.py) continue;; esac; $(PY) $$b || exit 1; done  # those two: make mutation

# Mutation testing (issue 26; not in CI: an hour or more on two cores, see README "Mutation testing"):
# mutmut per package in build/mutation/, then the no-op swaps of the issue; JSON rows on stdout.
mutation: $(STAMP)
	nice -n 10 $(PY) benchmarks/mutation.py
	nice -n 10 $(PY) benchmarks/noop_swaps.py

clean:
	rm -rf demo-out mlruns mlflow.db .pytest_cache
