"""The files in S3-compatible object storage (AWS S3, MinIO, Ceph RGW, R2, SeaweedFS): what several hosts
share, so that a download link works whichever host wrote the file.

- A file is one PUT with `If-None-Match: *`: S3 makes an object visible only once all of it has arrived,
  so a reader sees the whole file or none (a writer killed mid-upload leaves nothing), and an existing
  object is never replaced. The link is sent only after the PUT succeeded (`Runtime.publish`).
- The bucket stays private. A download is authorized by the app (API key or signed link), which answers
  with `X-Accel-Redirect` to nginx's internal `/_object` location and, in `X-Gateway-Object-Url`, a
  presigned GET URL valid for `s3_url_seconds`; nginx fetches it and sends the bytes (nginx/templates).
- Retention is the bucket's lifecycle rule (`apply_lifecycle`, from gunicorn's master at start), not a
  sweep: an expiry in whole days for the gateway's prefix.

obstore's calls block the thread they run on: `write` runs in gevent's thread pool (`off_loop`), like the
folder's fsync. Signing a URL is local computation (~12 µs): it runs in the request.
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import AlreadyExistsError
from obstore.store import S3Store

from app.storage import is_valid_name, new_name

if TYPE_CHECKING:
    from obstore.store import S3Config

    from app.settings import Settings

log = logging.getLogger(__name__)

RULE_ID = "metagpt-gateway-retention"  # the lifecycle rule this gateway owns; other rules are kept
CONTENT_TYPE = "text/markdown; charset=utf-8"


class ObjectStore:
    """The `TutorialStore` on S3: names and atomicity as the folder's, objects under `prefix`."""

    backend = "s3"

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.url_ttl = timedelta(seconds=settings.s3_url_seconds)
        config: S3Config = {"region": settings.s3_region, "virtual_hosted_style_request": False}
        if settings.s3_endpoint:
            config["endpoint"] = settings.s3_endpoint
        keys = _keys(settings)
        if keys is not None:
            config["access_key_id"], config["secret_access_key"] = keys
        timeout = f"{settings.s3_timeout_seconds}s"
        self._store = S3Store(
            self.bucket,
            prefix=self.prefix or None,
            config=config,
            client_options={
                "allow_http": settings.s3_endpoint.startswith("http://"),
                "timeout": timeout,
                "connect_timeout": "5s",
            },
            # A retried PUT that had in fact landed answers 412: `write` takes that as done.
            retry_config={"max_retries": 2, "retry_timeout": timedelta(seconds=settings.s3_timeout_seconds)},
        )

    def new_name(self, title: str, default: str = "tutorial") -> str:
        return new_name(title, default)

    def write(self, name: str, data: bytes) -> None:
        """Store `data` as `name`, whole or not at all (blocking: call it off the loop). Raises OSError."""
        if not is_valid_name(name):
            raise ValueError(f"unsafe tutorial name {name!r}")
        try:
            # One PUT (never multipart: no hidden parts), up to 5 GiB; a file is at most 4 Mi characters.
            obstore.put(
                self._store,
                name,
                data,
                mode="create",
                use_multipart=False,
                attributes={"Content-Type": CONTENT_TYPE},
            )
        except AlreadyExistsError:
            # Names carry 122 random bits: the object is this very PUT's, sent again by a retry.
            log.info("%s was already stored (a retried upload)", name)
        except Exception as exc:  # obstore's errors: network, HTTP status, credentials
            raise OSError(f"S3 PUT {self.prefix}{name}: {_first_line(exc)}") from exc

    def presigned_url(self, name: str) -> str | None:
        """A short-lived GET URL for `name` (None for a name the gateway never writes). Whether the object
        exists is the bucket's answer to that URL: nginx turns S3's 404 into the API's."""
        if not is_valid_name(name):
            return None
        return str(obstore.sign(self._store, "GET", name, self.url_ttl))

    def present(self) -> bool:
        return True  # asking the bucket on every readiness probe would cost a request each

    def has_room(self, margin: int) -> bool:
        return True

    def free_bytes(self) -> int | None:
        return None


def _keys(settings: Settings) -> tuple[str, str] | None:
    """The S3 keys the settings give, or None: then the AWS_* environment and instance roles are used."""
    key, secret = settings.s3_access_key_id, settings.s3_secret_access_key
    if key and key.get_secret_value() and secret and secret.get_secret_value():
        return key.get_secret_value(), secret.get_secret_value()
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def lifecycle_days(retention_seconds: int) -> int:
    """S3 expires objects in whole days: the retention, rounded up (0: no expiry)."""
    return math.ceil(retention_seconds / 86400) if retention_seconds else 0


def apply_lifecycle(settings: Settings) -> str:
    """Make the bucket's lifecycle rule `RULE_ID` expire the gateway's objects after the retention (or
    remove it when retention is off), keeping every other rule. Run once per start by gunicorn's master.
    Returns what was done; raises on failure (the caller logs it: the operator may not grant the right).

    boto3 (installed with MetaGPT) does this one call: obstore has no bucket operations."""
    import boto3  # ~0.4 s to import: only here, never in a request

    given = _keys(settings)
    keys = {"aws_access_key_id": given[0], "aws_secret_access_key": given[1]} if given else {}
    client = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint or None,
        region_name=settings.s3_region,
        config=boto3.session.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        **keys,
    )
    try:
        rules = client.get_bucket_lifecycle_configuration(Bucket=settings.s3_bucket)["Rules"]
    except client.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
            raise
        rules = []
    others = [rule for rule in rules if rule.get("ID") != RULE_ID]
    days = lifecycle_days(settings.retention_seconds)
    ours = []
    if days:
        ours = [
            {
                "ID": RULE_ID,
                "Status": "Enabled",
                "Filter": {"Prefix": settings.s3_prefix},
                "Expiration": {"Days": days},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
            }
        ]
    if not others and not ours:
        if rules:
            client.delete_bucket_lifecycle(Bucket=settings.s3_bucket)
        return "no expiry"
    client.put_bucket_lifecycle_configuration(
        Bucket=settings.s3_bucket, LifecycleConfiguration={"Rules": others + ours}
    )
    return f"objects under {settings.s3_prefix or '/'} expire after {days} days" if days else "no expiry"


def main() -> None:
    """`python -m app.object_store`: apply the lifecycle rule (gunicorn's master starts this at start, in
    a process of its own so that boto3 stays out of the workers)."""
    from app.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.load()
    try:
        done = apply_lifecycle(settings)
    except Exception as exc:
        log.error("could not set bucket %s's lifecycle rule %s: %s", settings.s3_bucket, RULE_ID, exc)
        raise SystemExit(1) from None
    log.info("bucket %s: %s (lifecycle rule %s)", settings.s3_bucket, done, RULE_ID)


if __name__ == "__main__":
    main()
