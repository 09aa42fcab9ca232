# fedssl developer entry points. `make run` and `make test` are the README's two commands.
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
OUT     ?= runs/quickstart

.PHONY: setup data containers run test test-fast bench-sim bench-openworld clean

$(BIN)/fedssl: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]" -c constraints.txt
	touch $@

setup: $(BIN)/fedssl data containers

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

# Container engine for tests/test_containers.py and `fedssl deploy containers`: podman +
# podman-compose + runc + mmdebstrap from apt, with settings for VMs without systemd
# (docker/setup-engine.sh; idempotent, leaves a running Docker engine alone).
containers:
	@if [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null; then ./docker/setup-engine.sh || echo "containers: setup failed; tests/test_containers.py will fail" >&2; \
	 else echo "containers: not root and no sudo; install podman podman-compose runc mmdebstrap" >&2; fi

run: setup
	$(BIN)/fedssl bench --grid examples/quickstart.toml --out $(OUT)

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900 --durations=15 -n 2 --dist loadfile

# unit tests only (no federation, process or server; tests/conftest.py marks those `system`)
test-fast: $(BIN)/fedssl
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not system" --timeout=300 --durations=10

bench-sim: setup
	$(BIN)/python benchmarks/sim_overhead.py

bench-openworld: setup
	$(BIN)/python benchmarks/openworld.py

clean:
	rm -rf runs .pytest_cache .hypothesis
