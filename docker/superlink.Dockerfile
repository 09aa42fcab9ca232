# fedssl's SuperLink image: Flower's SuperLink as is (it only routes messages; the app
# code travels in the FAB that `flwr run` submits, and the ServerApp runs in the
# serverapp container under --isolation process). BASE_IMAGE defaults to the official
# image; offline, pass the local stand-in (flwr-base.Dockerfile):
#
#   docker build -f docker/superlink.Dockerfile -t fedssl-superlink:0.1.0 build/containers/context
#   podman build -f docker/superlink.Dockerfile --build-arg BASE_IMAGE=localhost/fedssl-flwr:1.42.0 ...
ARG BASE_IMAGE=flwr/superlink:1.42.0
FROM ${BASE_IMAGE}
RUN python -c "import flwr; v = flwr.__version__; assert v == '1.42.0', v"
ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1
USER app
ENTRYPOINT ["flower-superlink"]
