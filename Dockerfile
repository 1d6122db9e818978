# syntax=docker/dockerfile:1
# Multi-stage build of the csi-cache node plugin image. The packaging issue finishes
# this file (labels, pinned base images); it builds a static binary today.
ARG GO_VERSION=1.26
FROM golang:${GO_VERSION}-bookworm AS build
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-X github.com/csi-cache/csi-cache/internal/version.Version=${VERSION}" \
      -o /out/csi-cache ./cmd/csi-cache

FROM debian:bookworm-slim
# What the node plugin executes: mkfs, fsck, resize tools, mount and blkid.
RUN apt-get update && apt-get install -y --no-install-recommends \
      e2fsprogs xfsprogs util-linux mount ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/csi-cache /usr/local/bin/csi-cache
ENTRYPOINT ["/usr/local/bin/csi-cache"]
