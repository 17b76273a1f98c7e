# syntax=docker/dockerfile:1
#
# connhealth images, for those who build with Docker (BuildKit):
#
#   docker build --target agent    -t connhealth-agent:0.1.0 .
#   docker build --target operator -t connhealth-operator:0.1.0 .
#
# (add --build-arg REVISION=$(git rev-parse HEAD) and
# --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) for those labels).
#
# Two images, one binary each, on an empty base: static binaries (glibc with
# crt-static), /etc/passwd and /etc/group naming uid 65532, nothing else.
# Default user 65532; the chart's DaemonSet runs the agent as uid 0 with three
# capabilities (charts/connhealth/README.md, "Security model").
#
# scripts/build-image builds the same images without a Docker daemon, as OCI
# archives (same files, user, entrypoint and labels; a test in
# e2e/tests/chart.rs keeps the two in step).

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
# clang and libbpf's headers build the eBPF tracker (scanner/build.rs).
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libbpf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    RUSTFLAGS='-C target-feature=+crt-static' \
      cargo build --release --target x86_64-unknown-linux-gnu --locked \
        -p connhealth-agent -p connhealth-operator \
 && mkdir -p /out/bin /out/rootfs/etc \
 && for bin in connhealth-agent connhealth-operator; do \
      strip --strip-debug -o "/out/bin/$bin" "target/x86_64-unknown-linux-gnu/release/$bin" \
      && "/out/bin/$bin" --version; \
    done \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >/out/rootfs/etc/passwd \
 && printf 'root:x:0:\nnonroot:x:65532:\n' >/out/rootfs/etc/group

FROM scratch AS agent
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
COPY --from=builder /out/rootfs/ /
COPY --from=builder /out/bin/connhealth-agent /usr/local/bin/connhealth-agent
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/connhealth-agent"]
CMD ["run"]
LABEL org.opencontainers.image.title="connhealth-agent" \
      org.opencontainers.image.description="The connhealth node agent: reads every pod's TCP sockets through sock_diag and reports them as ConnectionHealth objects." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/connhealth/connhealth" \
      org.opencontainers.image.url="https://github.com/connhealth/connhealth" \
      org.opencontainers.image.licenses="Apache-2.0"

FROM scratch AS operator
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
COPY --from=builder /out/rootfs/ /
COPY --from=builder /out/bin/connhealth-operator /usr/local/bin/connhealth-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/connhealth-operator"]
CMD ["run"]
LABEL org.opencontainers.image.title="connhealth-operator" \
      org.opencontainers.image.description="The connhealth operator: evaluates ConnectionHealthPolicy against ConnectionHealth reports and raises Events, annotations and verdicts." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/connhealth/connhealth" \
      org.opencontainers.image.url="https://github.com/connhealth/connhealth" \
      org.opencontainers.image.licenses="Apache-2.0"
