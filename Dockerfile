# The totes-cdc image the Helm chart runs: the binary on distroless (glibc, CA certificates, no
# shell, no package manager), as the unprivileged user 65532 the chart's securityContext expects.
# Base images are pinned by version tag; the release workflow resolves and records their digests.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
ARG TOTES_CDC_GIT_SHA=unknown
ENV TOTES_CDC_GIT_SHA=${TOTES_CDC_GIT_SHA}
RUN cargo build --release --locked --bin totes-cdc

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/totes-cdc /usr/local/bin/totes-cdc
USER 65532:65532
ENV TOTES_CDC_METRICS_ADDR=0.0.0.0:9898 TOTES_CDC_LOG_FORMAT=json
EXPOSE 9898
ENTRYPOINT ["/usr/local/bin/totes-cdc"]
CMD ["--help"]
