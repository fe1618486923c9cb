# syntax=docker/dockerfile:1
#
# haina CSI driver image: one binary, `haina`, plus the host tools it drives
# (loop devices, mkfs/resize, Ceph RBD via krbd, rbd-nbd or rbd-fuse).
#
#   docker build -t haina:0.1.0 .
#
# The same image runs the controller Deployment and the node DaemonSet of
# deploy/helm/haina.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder

# Nothing beyond the Rust toolchain: the CSI protobufs compile with protox
# (no protoc), and librados/librbd are loaded at run time (no -dev packages).
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates

# The registry and target dirs are BuildKit caches; the binary is copied out
# of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p haina \
    && install -D -m 0755 target/release/haina /out/haina

FROM ${RUNTIME_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="haina" \
      org.opencontainers.image.description="haina CSI block-storage driver (local image files and Ceph RBD)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# util-linux/mount: losetup, blkid, mount, findmnt
# e2fsprogs/xfsprogs: mkfs, resize2fs, xfs_growfs
# ceph-common: rbd (krbd map), librbd/librados; rbd-nbd and rbd-fuse: the
# other two RBD mounters; fuse3: /dev/fuse helpers; kmod: modprobe rbd/nbd
# against the host's /lib/modules.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates \
        util-linux \
        mount \
        e2fsprogs \
        xfsprogs \
        kmod \
        ceph-common \
        rbd-nbd \
        rbd-fuse \
        fuse3 \
    && rm -rf /var/lib/apt/lists/*

COPY --from=builder /out/haina /usr/local/bin/haina

# No USER: the node plugin runs as root (in a privileged container) for loop
# devices, mounts and krbd; the controller may drop it via securityContext.
ENTRYPOINT ["/usr/local/bin/haina"]
CMD ["serve"]
