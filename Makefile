# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv when it is missing; torch is bounded (pyproject) so pip takes the CPU wheel.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,tensorboard,mlflow,wandb,hf]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/trainforge demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/checkpoint.py
	$(BIN)/python bench/data.py
	$(BIN)/python bench/char_lm.py

clean:
	rm -rf $(VENV) runs .pytest_cache
