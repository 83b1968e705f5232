# shardcast in a container: a multi-stage build, a small runtime image.
#
#   docker build -t shardcast .
#   docker run --rm -p 3000:3000 shardcast                       # epoll under Docker's default seccomp profile
#   docker run --rm -p 3000:3000 --security-opt seccomp=shardcast-seccomp.json shardcast   # io_uring
#
# Under the default profile (Docker 25+ refuses io_uring) the server falls back to epoll by
# itself and says so in one warning line; docs/deploy.md shows a profile that allows io_uring,
# and the sysctls and ulimits that matter for many connections.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p shardcast \
 && cp target/release/shardcast /shardcast \
 && strip /shardcast

FROM debian:bookworm-slim
COPY --from=build /shardcast /usr/local/bin/shardcast
USER 65534:65534
EXPOSE 3000
# SIGTERM closes sessions politely (3 s grace): give `docker stop` more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/shardcast"]
CMD ["--bind", "0.0.0.0:3000"]
