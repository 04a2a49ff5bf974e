# tideflow with the ONNX Runtime library, for docker-compose.yml and for
# operators who run worker processes in containers.
#
#   docker build -t tideflow .
#   docker run --rm tideflow check dataflows/fraud_kafka.toml

# Build: the release binary (librdkafka is built from source by the
# rdkafka crate, hence the C toolchain and OpenSSL headers).
FROM rust:1.92-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake libssl-dev pkg-config zlib1g-dev python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY connectors connectors
COPY src src
COPY benches benches
COPY tests tests
RUN cargo build --release --bin tideflow

# The ONNX Runtime library from the onnxruntime wheel on PyPI, the version
# the ort crate targets (as scripts/setup-onnxruntime.sh installs it).
FROM python:3.12-slim-bookworm AS onnxruntime
RUN pip download --no-deps --only-binary=:all: --dest /wheel onnxruntime==1.31.1 \
 && cd /wheel && python -m zipfile -e onnxruntime-*.whl unpacked \
 && cp unpacked/onnxruntime/capi/libonnxruntime.so.* /libonnxruntime.so

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tideflow /usr/local/bin/tideflow
COPY --from=onnxruntime /libonnxruntime.so /opt/onnxruntime/libonnxruntime.so
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so
WORKDIR /app
COPY dataflows dataflows
COPY models models
ENTRYPOINT ["tideflow"]
CMD ["--help"]
