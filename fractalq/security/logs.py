"""Keeping secrets out of the log, whatever the log level.

Two layers, installed by every long-running command once its logging is set
up (:func:`protect_logs`):

* The libraries that log whole requests at DEBUG are kept at INFO even when
  ``-v`` asks for DEBUG: botocore and s3transfer print S3 requests with their
  ``Authorization`` header (the access key id and the signature), urllib3
  prints request lines (a presigned URL's query holds both), the Kubernetes
  client prints its API calls' headers (the service account's bearer token).
  What they say at INFO and above is about connections, never credentials.
* A filter on every handler of the root logger rewrites each record before
  it is written: the values of ``Authorization`` headers, bearer tokens,
  SigV4 signatures and credentials, and any secret this process was given
  (its role token, its S3 secret key and access key id), become ``***``. So
  a secret that reaches a message some other way (an exception's text, a
  library we did not think of) is caught there too, and so is one in a
  record's extra fields (which JSON lines print, :mod:`fractalq.logs`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable

# Loggers kept at INFO or quieter: at DEBUG they print requests with their credentials.
QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "kubernetes")
# Environment variables whose values are secrets (or name one, like the key id).
SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
    "FRACTALQ_TOKEN",
)
HIDDEN = "***"
# A record's own attributes; any other is an extra field the caller added.
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

_PATTERNS = (
    # An Authorization header in any of the shapes libraries print it:
    # "Authorization: X", 'Authorization': b'X', authorization=X.
    re.compile(r"""(?i)(authorization['"]?\s*[:=]\s*b?)('[^']*'|"[^"]*"|[^\r\n,;}]+)"""),
    re.compile(r"(?i)(bearer\s+)[!-~]+"),
    # SigV4 in headers and in presigned URLs' queries.
    re.compile(
        r"""(?i)(x-amz-(?:signature|credential|security-token)['"]?\s*[:=]\s*b?['"]?)[^'"&\s,}]+"""
    ),
    re.compile(r"(?i)((?:^|[\s,])(?:signature|credential)=)[^\s,&'\"]+"),
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with credentials and the given ``secrets`` replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, HIDDEN)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda found: found.group(1) + HIDDEN, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites a record's message (and its traceback) with :func:`redact`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Short values would hide ordinary words; real secrets are long.
        self.secrets = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        for name, value in list(record.__dict__.items()):
            if isinstance(value, str) and name not in _RECORD_ATTRIBUTES:
                setattr(record, name, redact(value, self.secrets))
        return True


def protect_logs(secrets: Iterable[str] = ()) -> None:
    """Quiet the request-printing libraries and filter every root handler.

    ``secrets``: values this process holds besides those in
    :data:`SECRET_VARIABLES` (a token read from a file, say).
    """
    for name in QUIET_LOGGERS:
        library = logging.getLogger(name)
        if library.getEffectiveLevel() < logging.INFO:
            library.setLevel(logging.INFO)
    known = [*secrets, *(os.environ.get(name, "") for name in SECRET_VARIABLES)]
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactSecrets)]:
            handler.removeFilter(old)
        handler.addFilter(RedactSecrets(known))
