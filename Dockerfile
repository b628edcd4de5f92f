# The totes-cdc image the Helm chart runs: one static-ish binary on a small Debian base,
# running as an unprivileged user (65532, as the chart's securityContext expects).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
ARG TOTES_CDC_GIT_SHA=unknown
ENV TOTES_CDC_GIT_SHA=${TOTES_CDC_GIT_SHA}
RUN cargo build --release --locked --bin totes-cdc

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/totes-cdc /usr/local/bin/totes-cdc
USER 65532:65532
ENV TOTES_CDC_METRICS_ADDR=0.0.0.0:9898 TOTES_CDC_LOG_FORMAT=json
EXPOSE 9898
ENTRYPOINT ["totes-cdc"]
CMD ["--help"]
