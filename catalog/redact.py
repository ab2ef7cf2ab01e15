"""Keep credentials out of reprs, logs, lineage and commit metadata.

Storage options are redacted by allowlist: only names known to be harmless (endpoints,
regions, flags) are shown; every other value prints as '***'. URLs lose their user-info and
query string (presigned URLs are bearer credentials). `SecretFilter` scrubs known secret
values (from storage options and from credential environment variables) from log records of
the catalog's loggers as a second line of defence.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"

_SAFE_OPTION_NAMES = {
    "endpoint_url", "region_name", "region", "anon", "use_ssl", "verify", "client_kwargs",
    "config_kwargs", "s3_additional_kwargs", "default_block_size", "default_fill_cache",
    "version_aware", "cache_regions", "requester_pays", "project", "consistency", "skip_instance_cache",
    "use_listings_cache", "listings_expiry_time", "max_concurrency", "auto_mkdir",
    "aws_endpoint_url", "aws_endpoint", "aws_region", "aws_default_region", "aws_allow_http",
    "aws_skip_signature", "aws_conditional_put", "aws_s3_allow_unsafe_rename", "aws_virtual_hosted_style_request",
    "allow_http", "timeout", "connect_timeout", "signature_version", "addressing_style",
    "retries", "max_attempts", "total_max_attempts", "mode", "read_timeout", "max_pool_connections",
}

# Environment variables that hold credentials for the object stores we reach (the documented
# way to give them): their values are scrubbed like secret storage options.
_SECRET_ENV = re.compile(r"^(AWS|AZURE|GOOGLE|GCS|GCP|MINIO)_\w*(KEY|SECRET|TOKEN|PASSWORD|CREDENTIALS|SAS)\w*$")


def redact_options(options: Any) -> Any:
    """A copy of a (nested) storage-options mapping with every non-allowlisted value as '***'."""
    if isinstance(options, dict):
        out = {}
        for name, value in options.items():
            if str(name).lower() in _SAFE_OPTION_NAMES:
                out[name] = redact_options(value) if isinstance(value, dict) else _safe_scalar(value)
            else:
                out[name] = REDACTED
        return out
    return REDACTED


def public_options(options: dict | None) -> dict:
    """Only the allowlisted (non-secret) storage options, at every level of nesting (s3fs takes
    keys inside client_kwargs too), with user-info stripped from URLs: what may be handed to
    other processes such as Ray actors. Credentials come from each process's own environment
    (AWS_* variables, instance roles, workload identity), never from arguments."""
    out = {}
    for name, value in (options or {}).items():
        if str(name).lower() not in _SAFE_OPTION_NAMES:
            continue
        if isinstance(value, dict):
            value = public_options(value)
        elif isinstance(value, str) and "://" in value:
            value = redact_url(value)
        out[name] = value
    return out


def _safe_scalar(value: Any) -> Any:
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    return value if isinstance(value, str) else REDACTED


def redact_url(url: str) -> str:
    """Drop user-info and query/fragment from a URL; plain paths pass unchanged."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def secret_values(options: Any) -> set[str]:
    """Every string value of `options` that redact_options would hide (to scrub from logs)."""
    found: set[str] = set()

    def walk(obj: Any, hidden: bool) -> None:
        if isinstance(obj, dict):
            for name, value in obj.items():
                walk(value, hidden or str(name).lower() not in _SAFE_OPTION_NAMES)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                walk(value, hidden)
        elif isinstance(obj, str) and hidden and len(obj) >= 8:
            found.add(obj)

    walk(options, False)
    return found


def env_secret_values(environ: Mapping[str, str] = os.environ) -> set[str]:
    """The values of credential environment variables (AWS_SECRET_ACCESS_KEY, ...)."""
    return {value for name, value in environ.items() if _SECRET_ENV.match(name.upper()) and len(value) >= 8}


class SecretFilter(logging.Filter):
    """Replaces registered secret values in log records with '***'."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def register(self, values: set[str]) -> None:
        with self._lock:
            self._secrets |= values

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        scrubbed = message
        for secret in self._secrets:
            if secret in scrubbed:
                scrubbed = scrubbed.replace(secret, REDACTED)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


SECRET_FILTER = SecretFilter()


# Third-party loggers known to print request headers (the AWS access key id sits in the
# Authorization header botocore.endpoint logs at DEBUG).
THIRD_PARTY_LOGGERS = ("botocore.endpoint", "botocore.auth", "aiobotocore.endpoint", "s3fs", "gcsfs",
                       "openlineage.client.transport.http", "openlineage.client.transport.file")


def guard_third_party_loggers() -> None:
    for name in THIRD_PARTY_LOGGERS:
        get_logger(name)


def get_logger(name: str) -> logging.Logger:
    """A logger for catalog modules, with the secret filter attached."""
    logger = logging.getLogger(name)
    if SECRET_FILTER not in logger.filters:
        logger.addFilter(SECRET_FILTER)
    return logger


def scrub(text: str) -> str:
    """Replace every registered secret value in `text` (for error messages we store)."""
    for secret in SECRET_FILTER._secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text
