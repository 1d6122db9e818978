# syntax=docker/dockerfile:1
# The csi-cache image: one static binary (`csi-cache serve` is the node plugin) on
# Debian with the tools the plugin runs: mkfs, fsck and grow tools for ext4 and
# xfs, mount, blkid, and modprobe for the chart's optional nbd init container.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) \
#     --build-arg COMMIT=$(git rev-parse --short HEAD) -t csi-cache:dev .
#
# It needs BuildKit (the default builder of Docker 23 and later; buildah and podman
# also understand it): cache mounts, and cross-compilation for --platform.
# test/chart/dockerfile_test.go checks the stages and build arguments.

ARG GO_VERSION=1.26.8
ARG DEBIAN_RELEASE=bookworm

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG VERSION=dev
ARG COMMIT=unknown
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} go build -trimpath \
      -ldflags "-X github.com/csi-cache/csi-cache/internal/version.Version=${VERSION} -X github.com/csi-cache/csi-cache/internal/version.Commit=${COMMIT}" \
      -o /out/csi-cache ./cmd/csi-cache

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG VERSION=dev
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="csi-cache" \
      org.opencontainers.image.description="CSI driver with an NVMe cache in front of durable storage; volumes are NBD devices" \
      org.opencontainers.image.source="https://github.com/csi-cache/csi-cache" \
      org.opencontainers.image.url="https://github.com/csi-cache/csi-cache" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}"
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
      e2fsprogs xfsprogs util-linux mount kmod ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/csi-cache /usr/local/bin/csi-cache
ENTRYPOINT ["/usr/local/bin/csi-cache"]
CMD ["serve"]
