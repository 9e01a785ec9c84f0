# syntax=docker/dockerfile:1
# rtpengine for anchored media (the chart's media.rtpengine DaemonSet): Debian's
# rtpengine-daemon, run in user space (--table=-1: no kernel module) as a non-root user.
#
#   docker build -f deploy/rtpengine.Dockerfile -t ghcr.io/tandem-sip/rtpengine:10.5 deploy

ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE}
LABEL org.opencontainers.image.title="tandem-rtpengine" \
      org.opencontainers.image.description="rtpengine for tandem's anchored media" \
      org.opencontainers.image.source="https://github.com/tandem-sip/tandem"
RUN apt-get update \
    && apt-get install -y --no-install-recommends rtpengine-daemon \
    && rm -rf /var/lib/apt/lists/*
USER 10001:10001
ENTRYPOINT ["rtpengine"]
