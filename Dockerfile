# syntax=docker/dockerfile:1
#
# audit-forwarder: `forward` (the kube-apiserver sidecar) and `receive` (in the
# cluster), plus the example WebAssembly filters.
#
#   docker build -t audit-forwarder:dev .
#   scripts/image.sh full | fast     # podman, offline bases, smoke test (README "Container image")
#   docker run --rm --read-only --tmpfs /tmp audit-forwarder:dev demo --events 200
#   kind load docker-image audit-forwarder:dev --name audit-forwarder   # kind/README.md
#
# Image contents
#   /usr/local/bin/audit-forwarder                  (debug info stripped, symbols kept)
#   /usr/share/audit-forwarder/filters/{add-cluster-id,drop-read-only,redact}.wasm
#   /usr/share/audit-forwarder/presets/*.yaml       (for reference: the binary embeds them)
#   /var/lib/audit-forwarder                        (state_dir default; a VOLUME, owned by 65532, mode 0700)
# Runs as uid/gid 65532 (distroless "nonroot"), with a read-only root
# filesystem: the only path written is state_dir (checkpoints, wasm-cache), so
# mount a volume there (Kubernetes: emptyDir for `receive` needs none; the
# sidecar uses a hostPath). `demo` also needs a writable /tmp.
# Nothing is EXPOSEd: ports depend on the configuration (receive.listen,
# http_listen).
#
# Reproducible builds: base images pinned by tag (for bit-for-bit rebuilds pin
# their digests too: --build-arg RUST_IMAGE=rust:1.95-bookworm@sha256:...),
# every crate from Cargo.lock (--locked). The only cache mounts are cargo's
# download caches, whose contents are checked against Cargo.lock's checksums;
# target/ is deliberately NOT a cache mount (cargo's mtime-based fingerprints
# could reuse an artifact built from other sources). For stable timestamps:
#   docker buildx build --build-arg SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) \
#     --output type=docker,name=audit-forwarder:dev,rewrite-timestamp=true .

ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Same toolchain steps as scripts/test-all.sh.
RUN rustup target add wasm32-wasip2
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo build --release --locked --target wasm32-wasip2 --manifest-path example-filters/Cargo.toml \
 && cargo build --release --locked
# Collect what the image ships; the filters get the names the docs and `demo`
# use (add-cluster-id.wasm, not add_cluster_id.wasm). Then a smoke test: the
# binary runs and every filter loads in the real host.
RUN install -d -m 0755 /out/bin /out/filters /out/presets \
 && strip --strip-debug -o /out/bin/audit-forwarder target/release/audit-forwarder \
 && for f in add_cluster_id drop_read_only redact; do \
      install -m 0644 "example-filters/target/wasm32-wasip2/release/$f.wasm" "/out/filters/$(echo "$f" | tr _ -).wasm"; \
    done \
 && install -m 0644 presets/*.yaml /out/presets/ \
 && install -d -o 65532 -g 65532 -m 0700 /out/varlib/audit-forwarder \
 && /out/bin/audit-forwarder --version \
 && /out/bin/audit-forwarder --log-level warn filter test --wasm /out/filters/add-cluster-id.wasm --config cluster=build-check < /dev/null \
 && /out/bin/audit-forwarder --log-level warn filter test --wasm /out/filters/drop-read-only.wasm < /dev/null \
 && /out/bin/audit-forwarder --log-level warn filter test --wasm /out/filters/redact.wasm < /dev/null

# `--target prebuilt`: the same image from artifacts already built on the
# host (scripts/image.sh fast; the build context is the directory it
# stages: bin/, filters/, presets/, varlib/), so CI can afford it every run.
FROM ${RUNTIME_IMAGE} AS prebuilt
LABEL org.opencontainers.image.title="audit-forwarder" \
      org.opencontainers.image.description="Forwards Kubernetes audit logs over the Fluent Forward protocol, without loss" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY bin/audit-forwarder /usr/local/bin/audit-forwarder
COPY filters/ /usr/share/audit-forwarder/filters/
COPY presets/ /usr/share/audit-forwarder/presets/
COPY --chown=65532:65532 varlib/ /var/lib/
USER 65532:65532
VOLUME ["/var/lib/audit-forwarder"]
ENTRYPOINT ["audit-forwarder"]
CMD ["--help"]

# The default target: built from source in the `build` stage above.
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="audit-forwarder" \
      org.opencontainers.image.description="Forwards Kubernetes audit logs over the Fluent Forward protocol, without loss" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/bin/audit-forwarder /usr/local/bin/audit-forwarder
COPY --from=build /out/filters/ /usr/share/audit-forwarder/filters/
COPY --from=build /out/presets/ /usr/share/audit-forwarder/presets/
# The parent is copied so that the state directory keeps its mode (0700:
# audit content); a volume mounted there starts with it.
COPY --from=build --chown=65532:65532 /out/varlib/ /var/lib/
USER 65532:65532
VOLUME ["/var/lib/audit-forwarder"]
ENTRYPOINT ["audit-forwarder"]
CMD ["--help"]
