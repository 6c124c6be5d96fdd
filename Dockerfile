# The flywheel binary (every role is a subcommand) and the shop simulator.
# Without the development broker (`--no-default-features`): a deployment
# connects to the Kafka of `kafka.bootstrap`.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --no-default-features --bin flywheel -p flywheel \
 && cargo build --release --locked -p shopsim

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* && useradd --system flywheel
COPY --from=build /src/target/release/flywheel /src/target/release/shopsim /usr/local/bin/
COPY connectors /etc/flywheel/connectors
USER flywheel
ENTRYPOINT ["flywheel"]
