# The pgshard image. Two ways to get the binary:
#   - from source (the default): the build stage compiles it with cargo (needs internet for crates);
#   - from the host: put a pgshard binary built on a compatible system (same or older glibc) in the
#     build context and name it with --build-arg PGSHARD_BINARY=path/in/context; nothing is compiled.
# Base images are build arguments, so machines without a registry can pass images built locally
# (scripts/build-images.sh passes its Debian root for both).
ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
ARG PGSHARD_BINARY=
WORKDIR /src
COPY . .
RUN set -eu; \
    if [ -n "$PGSHARD_BINARY" ]; then \
        install -m 0755 "$PGSHARD_BINARY" /pgshard; \
    else \
        apt-get update; \
        apt-get install -y --no-install-recommends libclang-dev; \
        cargo build --release --locked; \
        install -m 0755 target/release/pgshard /pgshard; \
    fi

FROM ${BASE_IMAGE}
COPY --from=build /pgshard /usr/local/bin/pgshard
# Unprivileged: the proxy needs no root, and its config is mounted read-only.
USER 65534:65534
EXPOSE 6432
ENTRYPOINT ["pgshard"]
CMD ["serve", "--config", "/etc/pgshard/pgshard.toml"]
