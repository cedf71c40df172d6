# Stand-in for nginx/nginx-prometheus-exporter:1.4.0, from Debian's exporter 0.11 (no registry here);
# README.md says how it differs. Go's flag package takes the compose file's `--nginx.scrape-uri=`.
FROM gateway-standin/services-rootfs
USER nobody
EXPOSE 9113
ENTRYPOINT ["/usr/bin/prometheus-nginx-exporter"]
