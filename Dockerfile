# Build: docker build -t vmscan .   Run: docker run -p 8080:8080 vmscan
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin vmscan

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates qemu-utils qemu-system-x86 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/vmscan /usr/local/bin/vmscan
COPY --from=build /src/static /usr/share/vmscan/static
COPY --from=build /src/config/vmscan.example.toml /etc/vmscan/vmscan.toml
# An unprivileged user owns the data directory; vmscan never needs root
# (add it to the kvm group at run time for hardware acceleration).
RUN groupadd --system vmscan && useradd --system --gid vmscan --home-dir /var/lib/vmscan --shell /usr/sbin/nologin vmscan \
    && mkdir -p /var/lib/vmscan && chown vmscan:vmscan /var/lib/vmscan
USER vmscan
# Set VMSCAN_SERVER__EXTERNAL_URL (or VMSCAN_AUTH__ALLOWED_HOSTS) to the name
# people use: state-changing requests for other host names are refused.
ENV VMSCAN_STATIC_DIR=/usr/share/vmscan/static \
    VMSCAN_SERVER__LISTEN=0.0.0.0:8080 \
    VMSCAN_STORAGE__DATA_DIR=/var/lib/vmscan
VOLUME /var/lib/vmscan
EXPOSE 8080
ENTRYPOINT ["vmscan", "--config", "/etc/vmscan/vmscan.toml"]
CMD ["serve"]
