# fedssl's SuperNode image: Flower's SuperNode plus fedssl *without torch*. The
# SuperNode only relays messages; under --isolation process its ClientApp runs in a
# separate clientapp container (superexec.Dockerfile, target clientapp), which holds
# torch and the node's data. The entrypoint `fedssl node start --` validates the node
# config (partition-id in [0, num-partitions), data-dir holding that partition's shard)
# with one `error:` line and exit status 2, then execs flower-supernode.
#
# Build context: a wheelhouse directory `wheels/` holding fedssl's wheel, the wheels of
# requirements-supernode.txt and that file (`fedssl deploy containers --build-only` makes it;
# by hand: see docs/deployment.md). BASE_IMAGE defaults to the official image; offline,
# pass the local stand-in (flwr-base.Dockerfile) and PIP_ARGS=--no-index.
ARG BASE_IMAGE=flwr/supernode:1.42.0
FROM ${BASE_IMAGE}
ARG PIP_ARGS=""
USER root
COPY wheels/requirements-supernode.txt /tmp/requirements-supernode.txt
RUN --mount=type=bind,source=wheels,target=/tmp/wheels \
    python -m pip install --no-cache-dir ${PIP_ARGS} --find-links /tmp/wheels -r /tmp/requirements-supernode.txt \
    && python -m pip install --no-cache-dir --no-index --no-deps --find-links /tmp/wheels fedssl \
    && python -c "import flwr; v = flwr.__version__; assert v == '1.42.0', v" \
    && ! python -c "import torch" 2>/dev/null \
    && fedssl node --help > /dev/null
ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1
USER app
ENTRYPOINT ["fedssl", "node", "start", "--"]
