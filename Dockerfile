# Build stage: compile the release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin lacquer

# Runtime stage: a minimal Debian with only the binary and the example config.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home lacquer \
    && mkdir -p /etc/lacquer
COPY --from=build /src/target/release/lacquer /usr/local/bin/lacquer
COPY proxy.toml /etc/lacquer/proxy.toml
USER lacquer
EXPOSE 8080
STOPSIGNAL SIGTERM
# Readiness: the admin health endpoint answers 200 while an origin is healthy.
# (No curl in the image: bash's /dev/tcp speaks the one HTTP request needed.)
HEALTHCHECK --interval=10s --timeout=3s CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /.lacquer/healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/lacquer"]
CMD ["serve", "--config", "/etc/lacquer/proxy.toml"]
