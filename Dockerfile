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
ENV VMSCAN_STATIC_DIR=/usr/share/vmscan/static \
    VMSCAN_SERVER__LISTEN=0.0.0.0:8080 \
    VMSCAN_STORAGE__DATA_DIR=/var/lib/vmscan
VOLUME /var/lib/vmscan
EXPOSE 8080
ENTRYPOINT ["vmscan", "--config", "/etc/vmscan/vmscan.toml"]
CMD ["serve"]
