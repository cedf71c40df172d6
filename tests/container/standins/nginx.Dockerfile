# Stand-in for nginx:1.27.4-alpine, from Debian's nginx 1.22 (no registry here); README.md says how it
# differs. What the project relies on is kept: user nginx (uid 101), the welcome server in
# conf.d/default.conf, templates rendered by the entrypoint, logs on stdout/stderr, SIGQUIT to stop.
FROM gateway-standin/services-rootfs
# Debian's prometheus package took uid 100 / gid 101; the official image's nginx is 101:101.
RUN usermod -u 999 prometheus && groupmod -g 999 prometheus \
    && groupadd --system --gid 101 nginx \
    && useradd --system --uid 101 --gid 101 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nginx \
    && rm -rf /etc/nginx/sites-enabled /etc/nginx/sites-available /etc/nginx/conf.d/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log
COPY nginx-default.conf /etc/nginx/conf.d/default.conf
COPY nginx-entrypoint.sh /docker-entrypoint.sh
ENTRYPOINT ["/docker-entrypoint.sh"]
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
