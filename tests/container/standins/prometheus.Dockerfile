# Stand-in for prom/prometheus:v2.55.1, from Debian's prometheus 2.42 (no registry here); README.md says
# how it differs. Same entrypoint contract: the compose file's `command` is prometheus's arguments.
FROM gateway-standin/services-rootfs
RUN install -d -o nobody -g nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
VOLUME ["/prometheus"]
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
