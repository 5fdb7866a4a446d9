# Build: docker build -t edgegate .
# Run:   docker run -p 8883:8883 -v edgegate-data:/srv/edgegate/data edgegate
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --home /srv/edgegate edgegate \
    && mkdir -p /srv/edgegate/data && chown edgegate /srv/edgegate/data
COPY --from=build /src/target/release/edgegate /usr/local/bin/edgegate
COPY config.toml /srv/edgegate/config.toml
COPY policies /srv/edgegate/policies
COPY operator-policies /srv/edgegate/operator-policies
WORKDIR /srv/edgegate
USER edgegate
EXPOSE 8883 8443
VOLUME /srv/edgegate/data
ENTRYPOINT ["edgegate"]
CMD ["serve", "--config", "/srv/edgegate/config.toml"]
