# fedssl's SuperNode image: the official flwr/supernode image of the pinned version
# plus fedssl (without torch: the SuperNode only relays messages; the ClientApp runs
# in a fedssl-superexec container). Its entrypoint validates the node config
# (partition-id in [0, num-partitions), data-dir holding that partition's shard)
# with one `error:` line and exit status 2 before it execs flower-supernode.
# Build from the repository root:
#
#   docker build -f docker/supernode.Dockerfile -t fedssl-supernode:0.1.0 .
FROM flwr/supernode:1.42.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY fedssl ./fedssl
COPY server ./server
COPY client ./client
COPY strategies ./strategies

# `fedssl node start` needs numpy and tomli-w only (flwr, rich and cryptography come
# with the base image); the rest of fedssl's dependencies are not installed here.
RUN python -m pip install --no-cache-dir --no-deps . \
    && python -m pip install --no-cache-dir "numpy>=1.26" "tomli-w>=1.0" \
    && python -c "import flwr; v = flwr.__version__; assert v == '1.42.0', v" \
    && fedssl node --help > /dev/null

ENV FLWR_TELEMETRY_ENABLED=0
ENTRYPOINT ["fedssl", "node", "start", "--"]
