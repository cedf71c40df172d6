"""Render nginx/templates/gateway.conf.template for loopback, as the official image does in compose.

The image's entrypoint substitutes only variables that are defined (envsubst with a list), leaving
nginx's own `$host`-style variables alone; `render` does the same. Used by `make run`, the tests and
the benchmark:  python -m scripts.nginx_local PREFIX --listen 127.0.0.1:8080 --upstream 127.0.0.1:8000 ...
prints the main config path; run it with `nginx -p PREFIX -c PREFIX/nginx.conf -e PREFIX/error.log`.
`--upstream` given more than once puts nginx in front of several servers (replicas, hosts).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "nginx" / "templates" / "gateway.conf.template"
MAIN_TEMPLATE = ROOT / "nginx" / "local" / "nginx.conf.template"
STUDIO_DIR = ROOT / "studio"  # the browser page nginx serves at /
MIME_TYPES = "/etc/nginx/mime.types"  # Debian's nginx package
_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")

# The limits compose uses unless .env changes them.
DEFAULT_LIMITS = {"NGINX_STREAMS_PER_CLIENT": "20", "NGINX_RATE_PER_CLIENT": "10", "NGINX_RATE_BURST": "20"}
# Loopback: names in the config are addresses here, so nothing is ever looked up.
DEFAULT_RESOLVER = "127.0.0.1"


def render(text: str, env: dict[str, str]) -> str:
    """Replace `${NAME}` where NAME is in `env`; leave everything else exactly as written."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def template_variables(text: str) -> set[str]:
    return set(_VAR.findall(text))


def upstream_servers(upstream: str | Sequence[str]) -> str:
    """GATEWAY_UPSTREAM for one server or several: the template has one `server ${GATEWAY_UPSTREAM};`
    line, which several addresses joined by `; server ` turn into one line each."""
    servers = [upstream] if isinstance(upstream, str) else list(upstream)
    if not servers:
        raise ValueError("no upstream server")
    return ";\n    server ".join(servers)


def prepare(
    prefix: Path,
    *,
    listen: str,
    status_listen: str,
    upstream: str | Sequence[str],
    tutorials_dir: Path,
    limits: dict[str, str] | None = None,
    resolver: str = DEFAULT_RESOLVER,
    studio_dir: Path = STUDIO_DIR,
) -> Path:
    """Write PREFIX/conf.d/gateway.conf and PREFIX/nginx.conf; returns the main config's path.
    `upstream`: one server's address (`127.0.0.1:8000`, `unix:/path`), or a list of them."""
    prefix = prefix.resolve()
    for sub in ("conf.d", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    env = {
        "GATEWAY_UPSTREAM": upstream_servers(upstream),
        "NGINX_RESOLVER": resolver,
        "NGINX_PORT": listen,
        "NGINX_STATUS_PORT": status_listen,
        "TUTORIALS_DIR": str(tutorials_dir.resolve()),
        # Resolved: nginx serves it with disable_symlinks on, which refuses a symlink anywhere in the path.
        "STUDIO_DIR": str(studio_dir.resolve()),
        # The app's generation limit (whole seconds), which nginx outwaits for a non-streaming answer.
        "GATEWAY_MAX_GENERATION_SECONDS": str(
            int(float(os.environ.get("GATEWAY_MAX_GENERATION_SECONDS", "900")))
        ),
        # The keys the app accepts (nginx limits each key's client on its own); empty: by address.
        "GATEWAY_API_KEYS": os.environ.get("GATEWAY_API_KEYS", ""),
        **DEFAULT_LIMITS,
        **(limits or {}),
    }
    gateway = TEMPLATE.read_text()
    missing = template_variables(gateway) - set(env)
    if missing:
        raise ValueError(f"template variables without a value: {sorted(missing)}")
    (prefix / "conf.d" / "gateway.conf").write_text(render(gateway, env))
    # As root the workers would drop to `nobody`, who cannot read a private tutorials folder.
    user = "user root;" if os.geteuid() == 0 else ""
    main = render(
        MAIN_TEMPLATE.read_text(),
        {"NGINX_PREFIX": str(prefix), "NGINX_USER_DIRECTIVE": user, "NGINX_MIME_TYPES": MIME_TYPES},
    )
    path = prefix / "nginx.conf"
    path.write_text(main)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", type=Path)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--status-listen", required=True)
    parser.add_argument("--upstream", required=True, action="append", help="repeat for several servers")
    parser.add_argument("--tutorials-dir", type=Path, required=True)
    parser.add_argument("--studio-dir", type=Path, default=STUDIO_DIR)
    parser.add_argument("--streams-per-client", default=DEFAULT_LIMITS["NGINX_STREAMS_PER_CLIENT"])
    parser.add_argument("--rate-per-client", default=DEFAULT_LIMITS["NGINX_RATE_PER_CLIENT"])
    parser.add_argument("--rate-burst", default=DEFAULT_LIMITS["NGINX_RATE_BURST"])
    args = parser.parse_args()
    limits = {
        "NGINX_STREAMS_PER_CLIENT": args.streams_per_client,
        "NGINX_RATE_PER_CLIENT": args.rate_per_client,
        "NGINX_RATE_BURST": args.rate_burst,
    }
    print(
        prepare(
            args.prefix,
            listen=args.listen,
            status_listen=args.status_listen,
            upstream=args.upstream[0] if len(args.upstream) == 1 else args.upstream,
            tutorials_dir=args.tutorials_dir,
            limits=limits,
            studio_dir=args.studio_dir,
        )
    )


if __name__ == "__main__":
    main()
