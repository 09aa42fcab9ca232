# fedssl's app image for Flower's SuperExec (runs the ServerApp next to the SuperLink,
# and the ClientApps next to each SuperNode), on the official image of the pinned
# Flower version. Build from the repository root:
#
#   docker build -f docker/superexec.Dockerfile -t fedssl-superexec:0.1.0 .
#
# The SuperLink ships the app code itself (the FAB built by `flwr run`) at run time;
# this image provides what the code needs: torch (CPU wheels by default), fedssl's
# other dependencies, and fedssl itself (so `fedssl data export` etc. work inside it).
FROM flwr/superexec:1.42.0

# CPU wheels by default (the default index would pull several GB of CUDA libraries);
# pass --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 for GPUs.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

WORKDIR /app
RUN python -m pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        "torch>=2.2" "torchvision>=0.17"

COPY pyproject.toml README.md ./
COPY fedssl ./fedssl
COPY server ./server
COPY client ./client
COPY strategies ./strategies

# flwr is already installed in the base image at the pinned version: drop the
# flwr[simulation] requirement (and with it Ray), install the rest, and check that
# the image still has Flower 1.42.0.
RUN sed -i 's/^ *"flwr\[simulation\].*$//' pyproject.toml \
    && python -m pip install --no-cache-dir . \
    && python -c "import flwr, fedssl, torch; v = flwr.__version__; assert v == '1.42.0', v"

# mount points for shards (data-dir), client state (state-dir) and run outputs
# (run.out_dir), owned by the image's user so named volumes are writable
USER root
RUN mkdir -p /fedssl/data /fedssl/state /fedssl/runs && chown -R app:app /fedssl
USER app

ENV FEDSSL_NO_DOWNLOAD=1 \
    FLWR_TELEMETRY_ENABLED=0
ENTRYPOINT ["flower-superexec"]
