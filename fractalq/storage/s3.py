"""Storage in an S3-compatible bucket: ``s3://bucket/prefix``.

Key ``k`` is the object ``<prefix>/k`` in ``bucket``. The endpoint, credentials
and region come from the environment exactly as boto3 reads them
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, or a profile), so the same URL works against AWS,
MinIO or SeaweedFS; the region defaults to ``us-east-1`` because most
S3-compatible servers ignore it but SigV4 needs one.

Client settings, and why:

* path-style addressing (``http://host/bucket/key``): self-hosted servers seldom
  have the wildcard DNS that virtual-host style needs;
* SigV4 signatures, also for presigned URLs (botocore may otherwise presign
  with the legacy SigV2 that AWS no longer accepts in newer regions);
* checksums only where the API requires them: recent botocore adds CRC
  checksums by default, which several S3-compatible servers reject;
* short connect / longer read timeouts, and botocore's "standard" retry mode,
  which backs off on throttling and 5xx per request. fractalq's own retry
  (:mod:`fractalq.storage.retry`) sits on top for failures that outlast it.

The boto3 client is created lazily, once per process (it is re-created after a
fork and dropped when pickling): constructing an :class:`S3Storage` touches
neither the network nor boto3, so it is cheap to build from a URL in every
worker process.

Errors become one-line :class:`StorageError` s that name the bucket, key or
endpoint involved; a HEAD request has no error body, so there the status code
stands in for the error code.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import re
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from urllib3.exceptions import HTTPError as Urllib3Error

from fractalq.config import S3_DEFAULT_REGION
from fractalq.storage.base import (
    ObjectNotFoundError,
    Storage,
    StorageError,
    StorageOptions,
    bad_url,
    validate_expires,
    validate_key,
)
from fractalq.storage.retry import call_with_retry

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

T = TypeVar("T")

# Lenient on purpose (S3-compatible servers differ): what AWS allows plus
# upper case and underscores, which some servers accept for old buckets.
_BUCKET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]")
_CREDENTIAL_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "403",
}
_MISSING_KEY_CODES = {"NoSuchKey", "NotFound", "404"}
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
    "BadDigest",  # the body was damaged on the way: sending it again may work
}
# DeleteObjects takes at most this many keys per request.
_DELETE_BATCH = 1000
# Large objects (images) move in parts of this size, a few at a time: memory
# stays bounded whatever the image's size.
_TRANSFER = TransferConfig(
    multipart_threshold=8 * 1024 * 1024,
    multipart_chunksize=8 * 1024 * 1024,
    max_concurrency=4,
)
_ERRNO_TEXT = re.compile(r"\[Errno -?\d+\] ([^'\"\]\)]+)")


class S3Storage(Storage):
    """Objects under ``prefix`` in ``bucket`` on an S3-compatible server.

    ``endpoint_url`` and ``region`` override what boto3 would read from the
    environment; credentials always come from the environment (or a profile),
    so that they never end up in URLs, logs or pickles.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        options: StorageOptions | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> None:
        if not _BUCKET_NAME.fullmatch(bucket):
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self.options = options or StorageOptions()
        self.endpoint_url = endpoint_url
        self.region = region
        self._client: S3Client | None = None
        self._signer: S3Client | None = None  # for presigned URLs at the public endpoint
        self._client_pid = 0
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, options: StorageOptions | None = None) -> S3Storage:
        """Parse ``s3://bucket`` or ``s3://bucket/prefix``."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "s3":
            raise bad_url(url)
        if not parts.netloc:
            raise bad_url(url, "no bucket")
        if "@" in parts.netloc or ":" in parts.netloc:
            # Never echo what may be a secret key back into logs.
            _, at, host = parts.netloc.rpartition("@")
            shown = url.replace(parts.netloc, f"***@{host}", 1) if at else url
            raise bad_url(
                shown, "put the endpoint in AWS_ENDPOINT_URL and credentials in AWS_* variables"
            )
        if parts.query or parts.fragment:
            raise bad_url(url, "no query or fragment allowed")
        prefix = urllib.parse.unquote(parts.path).strip("/")
        try:
            return cls(parts.netloc, prefix, options=options)
        except ValueError as error:
            raise bad_url(url, str(error)) from error

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    # ---- the interface ---------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        name = self._object_key(key)
        # Content-MD5 makes the server reject bytes damaged on the way (AWS and
        # the common compatible servers check it, unlike botocore's newer CRC
        # checksums, which are off: see the module docstring). A single
        # PutObject is atomic: readers see the old object or the new one.
        digest = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        self._run(
            lambda client: client.put_object(
                Bucket=self.bucket, Key=name, Body=data, ContentMD5=digest
            ),
            key,
            f"put {key!r}",
        )

    def get(self, key: str) -> bytes:
        name = self._object_key(key)

        def fetch(client: S3Client) -> bytes:
            # Reading the body inside the retried call: a connection dropped
            # half-way through the download retries the whole get.
            body = client.get_object(Bucket=self.bucket, Key=name)["Body"]
            try:
                return body.read()
            finally:
                body.close()

        return self._run(fetch, key, f"get {key!r}")

    def put_file(self, key: str, path: str) -> int:
        name = self._object_key(key)
        size = os.path.getsize(path)
        # boto3's managed transfer: one PutObject when small, else a multipart
        # upload of 8 MiB parts, completed at once (readers never see part of it).
        self._run(
            lambda client: client.upload_file(path, self.bucket, name, Config=_TRANSFER),
            key,
            f"put {key!r}",
        )
        return size

    def get_file(self, key: str, path: str) -> int:
        name = self._object_key(key)
        folder = os.path.dirname(os.path.abspath(path))
        temp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")

        def fetch(client: S3Client) -> int:
            client.download_file(self.bucket, name, temp, Config=_TRANSFER)
            return os.path.getsize(temp)

        try:
            size = self._run(fetch, key, f"get {key!r}")
            os.replace(temp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        return size

    def exists(self, key: str) -> bool:
        name = self._object_key(key)

        def head(client: S3Client) -> bool:
            try:
                client.head_object(Bucket=self.bucket, Key=name)
            except ClientError as error:
                # HEAD has no error body: a 404 is a missing key -- or a missing
                # bucket, which check() (or the next put) reports clearly.
                if _status(error) == 404:
                    return False
                raise
            return True

        return self._run(head, key, f"exists {key!r}")

    def delete(self, keys: Iterable[str]) -> None:
        # Validate every key before deleting any; drop duplicates.
        names = list(dict.fromkeys(self._object_key(key) for key in keys))
        for start in range(0, len(names), _DELETE_BATCH):
            batch = names[start : start + _DELETE_BATCH]
            self._run(functools.partial(self._delete_batch, names=batch), None, "delete")

    def written_before(self, prefix: str, before: float) -> list[str]:
        folder = self._object_key(prefix.rstrip("/")) + "/"
        skip = len(self.prefix) + 1 if self.prefix else 0

        def listing(client: S3Client) -> list[str]:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder
            )
            return [
                item["Key"][skip:]
                for page in pages
                for item in page.get("Contents", [])
                if item["LastModified"].timestamp() < before
            ]

        return sorted(self._run(listing, None, f"list {prefix!r}"))

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def presigned_url(self, key: str, expires: int) -> str | None:
        name = self._object_key(key)
        validate_expires(expires)
        try:
            # Signs locally; needs credentials but no round trip.
            return self._get_signer().generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": name}, ExpiresIn=expires
            )
        except (BotoCoreError, ClientError) as error:
            raise self._translate(error, key) from error

    def check(self) -> None:
        # One round trip that proves endpoint, credentials and bucket at once.
        # No fractalq-level retry: a command should fail fast on a typo
        # (botocore still retries a dropped connection or a 5xx itself).
        self._run(lambda client: client.head_bucket(Bucket=self.bucket), None, "check", retry=False)

    # ---- pickling and the per-process client ----------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Neither a boto3 client nor a lock can (or should) cross processes.
        state["_client"] = state["_signer"] = None
        state["_client_pid"] = 0
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _get_client(self) -> S3Client:
        pid = os.getpid()
        if self._client is not None and self._client_pid == pid:
            return self._client
        if self._client_pid != pid:
            # After a fork the copied lock may be held by a thread that does
            # not exist here; the copied client's connections belong to the parent.
            self._lock = threading.Lock()
            self._client = None
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
                self._client_pid = pid
            return self._client

    def _get_signer(self) -> S3Client:
        client = self._get_client()  # also renews the per-process state after a fork
        public = self.options.public_endpoint
        if public is None:
            return client
        with self._lock:
            if self._signer is None:
                self._signer = self._make_client(public)
            return self._signer

    def _make_client(self, endpoint_url: str | None = None) -> S3Client:
        # A fresh Session per client: boto3's default session is not thread-safe.
        session = boto3.session.Session()
        config = Config(
            region_name=self.region or session.region_name or S3_DEFAULT_REGION,
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=self.options.connect_timeout,
            read_timeout=self.options.read_timeout,
            retries={"mode": "standard", "total_max_attempts": self.options.s3_max_attempts},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        try:
            return session.client(
                "s3", endpoint_url=endpoint_url or self.endpoint_url, config=config
            )
        except (ValueError, BotoCoreError) as error:
            # For example AWS_ENDPOINT_URL=localhost:9000 (no scheme).
            raise StorageError(
                f"cannot set up the S3 client for {self.location} "
                f"(endpoint {self._endpoint()}): {error}"
            ) from error

    # ---- helpers ---------------------------------------------------------

    def _object_key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _run(
        self,
        call: Callable[[S3Client], T],
        key: str | None,
        what: str,
        *,
        retry: bool = True,
    ) -> T:
        """Run ``call`` with the client, translating errors, retrying transient ones."""

        def attempt() -> T:
            client = self._get_client()
            try:
                return call(client)
            except (BotoCoreError, ClientError) as error:
                raise self._translate(error, key) from error
            except S3UploadFailedError as error:
                # boto3's managed upload raises this for a ClientError, which
                # is its context: translated, a 5xx or throttling stays transient.
                cause = error.__context__
                if isinstance(cause, BotoCoreError | ClientError):
                    raise self._translate(cause, key) from error
                if isinstance(cause, _CONNECTION_ERRORS):
                    raise self._broken(cause) from error
                raise StorageError(f"S3 upload to {self.location} failed: {error}") from error
            except _CONNECTION_ERRORS as error:
                # A socket error that no botocore class wrapped on its way out.
                raise self._broken(error) from error
            except RetriesExceededError as error:
                # boto3's managed download gave up on a stream that kept breaking.
                raise StorageError(
                    f"S3 endpoint {self._endpoint()} broke off sending object {key!r}",
                    transient=True,
                ) from error

        if not retry:
            return attempt()
        return call_with_retry(attempt, self.options, what=f"S3 {what} at {self.location}")

    def _broken(self, error: BaseException) -> StorageError:
        return StorageError(
            f"cannot reach S3 endpoint {self._endpoint()}: {_reason(error)}", transient=True
        )

    def _delete_batch(self, client: S3Client, names: list[str]) -> None:
        response = client.delete_objects(
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": name} for name in names], "Quiet": True},
        )
        for failure in response.get("Errors", []):
            code = failure.get("Code", "")
            if code == "NoSuchKey":
                continue  # deleting what is not there is fine
            raise self._describe(code, failure.get("Message", ""), 0, "DeleteObjects", None)

    def _endpoint(self) -> str:
        """The endpoint for messages: the client's, else what boto3 will use."""
        if self._client is not None:
            return self._client.meta.endpoint_url
        return (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or "the AWS S3 endpoint"
        )

    def _translate(self, error: BotoCoreError | ClientError, key: str | None) -> StorageError:
        """One line for a botocore error, flagged transient when retrying may help."""
        endpoint = self._endpoint()
        if isinstance(error, ClientError):
            details = error.response.get("Error", {})
            return self._describe(
                str(details.get("Code", "")),
                str(details.get("Message", "")),
                _status(error),
                error.operation_name,
                key,
            )
        if isinstance(error, NoCredentialsError | PartialCredentialsError):
            return StorageError(
                f"no usable S3 credentials for {self.location}: "
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(error, SSLError) and _is_certificate_error(error):
            # A certificate the client does not trust: waiting cannot fix it.
            return StorageError(f"TLS error talking to S3 endpoint {endpoint}: {_reason(error)}")
        if isinstance(error, ReadTimeoutError):
            return StorageError(
                f"S3 endpoint {endpoint} did not answer within {self.options.read_timeout:g}s",
                transient=True,
            )
        if isinstance(error, ConnectTimeoutError):
            return StorageError(
                f"cannot reach S3 endpoint {endpoint}: no connection within "
                f"{self.options.connect_timeout:g}s",
                transient=True,
            )
        if isinstance(error, ConnectionClosedError):
            return StorageError(
                f"S3 endpoint {endpoint} closed the connection before it answered", transient=True
            )
        if isinstance(error, ResponseStreamingError | IncompleteReadError):
            return StorageError(
                f"S3 endpoint {endpoint} broke off sending object {key!r}", transient=True
            )
        if isinstance(error, BotoConnectionError | HTTPClientError):
            # Every other way the connection can fail (refused, reset, a proxy's,
            # a TLS handshake cut off, whatever the HTTP client raised): an outage.
            return StorageError(
                f"cannot reach S3 endpoint {endpoint}: {_reason(error)}", transient=True
            )
        return StorageError(f"S3 request to {endpoint} failed: {error}")

    def _describe(
        self, code: str, message: str, status: int, operation: str, key: str | None
    ) -> StorageError:
        endpoint = self._endpoint()
        if code == "NoSuchBucket" or (status == 404 and operation == "HeadBucket"):
            return StorageError(f"bucket {self.bucket!r} does not exist at {endpoint}")
        if code in _MISSING_KEY_CODES and key is not None:
            return ObjectNotFoundError(f"no object {key!r} in {self.location}")
        if code == "RequestTimeTooSkewed":
            return StorageError(
                f"S3 endpoint {endpoint} rejects requests: this machine's clock is off"
            )
        if code in _CREDENTIAL_CODES or status == 403:
            return StorageError(
                f"access denied to bucket {self.bucket!r} at {endpoint} ({code or status}): "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            )
        if code == "InvalidBucketName":
            return StorageError(f"S3 endpoint {endpoint} rejects bucket name {self.bucket!r}")
        transient = code in _TRANSIENT_CODES or status >= 500 or status in (408, 429)
        subject = f"object {key!r}" if key is not None else self.location
        detail = f"{code}: {message}" if message else code or f"HTTP {status}"
        return StorageError(
            f"S3 {operation} of {subject} at {endpoint} failed ({detail})", transient=transient
        )


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


# Connection failures that may reach us unwrapped (from a socket, or urllib3
# underneath botocore): the store is unreachable or the connection broke.
_CONNECTION_ERRORS = (ConnectionError, TimeoutError, Urllib3Error)


def _is_certificate_error(error: SSLError) -> bool:
    """A TLS failure of trust (an unknown CA, a name mismatch, an expired
    certificate) rather than of the connection (cut off mid-handshake)."""
    cause = getattr(error, "kwargs", {}).get("error")
    if isinstance(cause, ssl.SSLCertVerificationError):
        return True
    return "CERTIFICATE_VERIFY_FAILED" in str(error) or "certificate verify failed" in str(error)


def _reason(error: BaseException) -> str:
    """The short cause inside a botocore connection error ("connection refused")."""
    text = str(getattr(error, "kwargs", {}).get("error", "")) or str(error)
    found = _ERRNO_TEXT.search(text)
    if found:
        return found.group(1).strip().lower()
    if isinstance(error, EndpointConnectionError):
        return "connection failed"
    return str(error) or type(error).__name__
