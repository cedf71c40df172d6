"""gunicorn settings for the gateway. Each value that is not gunicorn's default says why."""

import os

_env = os.environ.get


bind = [_env("GATEWAY_BIND", "127.0.0.1:8000")]
# nginx on the same host reaches the workers through a Unix socket: each streamed event costs the
# worker (and nginx) less than over loopback TCP, with no ACKs. The TCP address stays for health
# checks and Prometheus.
if _env("GATEWAY_UNIX_SOCKET"):
    bind.append(f"unix:{_env('GATEWAY_UNIX_SOCKET')}")
# gevent: thousands of mostly idle streams per worker; MetaGPT runs on an asyncio loop bridged into it.
worker_class = "app.transport.worker.GatewayWorker"  # gunicorn's gevent worker, with the changes it lists
workers = int(_env("GATEWAY_WORKERS", "2"))  # one per core on this 2-core machine
worker_connections = int(_env("GATEWAY_WORKER_CONNECTIONS", "1000"))
# `timeout` only kills a worker whose hub is blocked; streams themselves may run for minutes.
timeout = int(_env("GATEWAY_WORKER_TIMEOUT", "60"))
# Let running generations finish on SIGTERM before streams are cut.
graceful_timeout = int(_env("GATEWAY_GRACEFUL_TIMEOUT", "120"))
# Longer than nginx's upstream keepalive_timeout (60 s), so nginx never reuses a closed connection.
keepalive = int(_env("GATEWAY_KEEPALIVE", "75"))
# Recycling a worker would cut its streams.
max_requests = 0
# The heartbeat file on a slow disk can stall a worker's heartbeat; keep it in memory.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# No control socket under ~/.gunicorn: the service user may have no home.
control_socket_disable = True
accesslog = "-"
errorlog = "-"
loglevel = _env("GATEWAY_GUNICORN_LOG_LEVEL", "info")


def on_starting(server):
    """Create the admission table the workers share (app.capacity), set the S3 bucket's lifecycle rule
    (app.object_store, in a process of its own), and empty the metrics directory of a previous run: its
    files would be summed into this run's counters."""
    import pathlib
    import shutil

    from app import capacity

    capacity.create().set_workers(server.num_workers)

    if os.environ.get("GATEWAY_S3_BUCKET"):  # S3's retention is the bucket's lifecycle rule: set it now
        import subprocess
        import sys

        subprocess.Popen([sys.executable, "-m", "app.object_store"])

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        if server.cfg.workers > 1:
            server.log.warning("PROMETHEUS_MULTIPROC_DIR is not set: /metrics shows one worker only")
        return
    path = pathlib.Path(folder)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def nworkers_changed(server, new_value, old_value):
    """TTIN/TTOU or a reload changed the number of workers: capacity follows it."""
    from app import capacity

    table = capacity.shared()
    if table is not None:
        table.set_workers(new_value)


def child_exit(server, worker):
    """A dead worker's generations and live gauges must stop counting (multiprocess mode)."""
    from app import capacity

    table = capacity.shared()
    if table is not None:
        table.release_process(worker.pid)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
