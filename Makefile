# fedssl developer entry points. `make run` and `make test` are the README's two commands.
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
OUT     ?= runs/default

.PHONY: setup data run test bench-sim bench-openworld clean

$(BIN)/fedssl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/fedssl data

# Fashion-MNIST from Debian (IDX files under /usr/share/datasets/fashion-mnist), when apt exists.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq && $$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq dataset-fashion-mnist chromium >/dev/null; \
	fi
	@if [ -d /usr/share/datasets/fashion-mnist ] && ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium >/dev/null || true; \
	fi

run: setup
	$(BIN)/fedssl run --out $(OUT) --overwrite

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900; rc=$$?; [ $$rc -eq 5 ] && exit 0 || exit $$rc

bench-sim: setup
	$(BIN)/python benchmarks/sim_overhead.py

bench-openworld: setup
	$(BIN)/python benchmarks/openworld.py

clean:
	rm -rf runs .pytest_cache .hypothesis
