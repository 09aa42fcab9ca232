# Offline stand-in for Flower's official base images (flwr/superlink, flwr/supernode,
# flwr/superexec 1.42.0), for machines that reach no container registry: Python in a
# venv at /python/venv with flwr 1.42.0, user `app` (uid 49999), WORKDIR /app, as in
# the official images. BASE_IMAGE is any Debian/Ubuntu image with python3 + venv,
# e.g. one made from the apt mirror (what `fedssl deploy containers --build-only` does):
#
#   mmdebstrap --variant=apt --include=python3,python3-venv,ca-certificates bookworm rootfs.tar
#   podman import rootfs.tar localhost/fedssl-debian:bookworm
#   podman build -f docker/flwr-base.Dockerfile --build-arg BASE_IMAGE=localhost/fedssl-debian:bookworm \
#       -t localhost/fedssl-flwr:1.42.0 build/containers/context
#
# The build context is a wheelhouse (see superexec.Dockerfile); nothing is downloaded.
ARG BASE_IMAGE=localhost/fedssl-debian:bookworm
FROM ${BASE_IMAGE}
COPY wheels/requirements-flwr.txt /tmp/requirements-flwr.txt
RUN --mount=type=bind,source=wheels,target=/tmp/wheels \
    python3 -m venv /python/venv \
    && /python/venv/bin/python -m pip install --no-cache-dir --no-index --find-links /tmp/wheels \
        -r /tmp/requirements-flwr.txt \
    && useradd --uid 49999 --user-group --home-dir /app --create-home --shell /usr/sbin/nologin app \
    && /python/venv/bin/python -c "import flwr; v = flwr.__version__; assert v == '1.42.0', v"
ENV PATH=/python/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1
WORKDIR /app
USER app
