# fedssl's app images for Flower's SuperExec, one per role (`--target`):
#
#   serverapp  runs the ServerApp next to the SuperLink: torch (CPU) + fedssl, no
#              torchvision (the server never augments);
#   clientapp  runs one SuperNode's ClientApps (--isolation process) and mounts that
#              node's shard and state volume: serverapp + torchvision (RandAugment).
#
# The SuperLink ships the app code at run time (the FAB built by `flwr run`); these
# images provide what that code imports. Build context: a wheelhouse directory
# `wheels/` with fedssl's wheel, requirements-serverapp.txt, requirements-clientapp.txt
# and (offline) every wheel they name; `fedssl deploy containers --build-only` makes it. By hand,
# online, from the official base image:
#
#   python -m pip wheel --no-deps -w build/ctx/wheels .
#   cp docker/requirements-*.txt build/ctx/wheels/       # or write your own pins
#   docker build -f docker/superexec.Dockerfile --target clientapp -t fedssl-clientapp:0.1.0 build/ctx
#
# PIP_ARGS defaults to PyTorch's CPU index (PyPI's torch pulls several GB of CUDA
# libraries); offline: --build-arg PIP_ARGS=--no-index and a full wheelhouse.
# TORCHVISION_OPS_SHIM=1 installs docker/torchvision_ops_shim.py (see there) when the
# wheelhouse holds no CPU build of torchvision.
ARG BASE_IMAGE=flwr/superexec:1.42.0
FROM ${BASE_IMAGE} AS serverapp
ARG PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
USER root
COPY wheels/requirements-serverapp.txt /tmp/requirements-serverapp.txt
RUN --mount=type=bind,source=wheels,target=/tmp/wheels \
    python -m pip install --no-cache-dir ${PIP_ARGS} --find-links /tmp/wheels -r /tmp/requirements-serverapp.txt
COPY wheels/fedssl-*.whl /tmp/fedssl/
RUN python -m pip install --no-cache-dir --no-index --no-deps /tmp/fedssl/fedssl-*.whl \
    && rm -rf /tmp/fedssl \
    && python -c "import flwr, torch, fedssl.server.app; v = flwr.__version__; assert v == '1.42.0', v" \
    && mkdir -p /fedssl/data /fedssl/state /fedssl/runs && chown -R app:app /fedssl
# PYTHONDONTWRITEBYTECODE unset: every task is a fresh process that imports the FAB's
# sources; cached bytecode keeps its start inside Flower's 30 s task-claim window.
ENV FEDSSL_NO_DOWNLOAD=1 \
    PYTHONDONTWRITEBYTECODE= \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    OMP_NUM_THREADS=1
USER app
ENTRYPOINT ["flower-superexec"]

FROM serverapp AS clientapp
ARG PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
ARG TORCHVISION_OPS_SHIM=0
USER root
COPY wheels/requirements-clientapp.txt wheels/torchvision_ops_shim.py /tmp/
RUN --mount=type=bind,source=wheels,target=/tmp/wheels \
    python -m pip install --no-cache-dir ${PIP_ARGS} --no-deps --find-links /tmp/wheels -r /tmp/requirements-clientapp.txt \
    && if [ "$TORCHVISION_OPS_SHIM" = 1 ]; then \
         site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
         && cp /tmp/torchvision_ops_shim.py "$site/fedssl_torchvision_ops_shim.py" \
         && echo "import fedssl_torchvision_ops_shim" > "$site/fedssl_torchvision_ops_shim.pth"; \
       fi \
    && python -c "import fedssl.client.app, torch; from torchvision.transforms import v2; v2.RandAugment(2, 10)(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))"
USER app
