# Stand-in for python:3.11-slim-bookworm, from Debian's own packages (no registry here); README.md says
# how it differs. The rootfs (tests/container/standins.py) holds python3.11, pip, passwd and the CAs.
FROM gateway-standin/python-rootfs
ENV LANG=C.UTF-8 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
