"""S3 backend (boto3): object ``name`` is key ``prefix + name`` in one bucket.

Small objects go up in one PUT; larger ones and every ``store_file`` in a multipart upload with
a fixed part size, holding one part in memory. A failed multipart upload is aborted, so a reader
sees the complete object or nothing. Throttling and 5xx answers are retried by botocore with
backoff a bounded number of times. Credentials never appear in messages, logs or ``repr``.
"""

from __future__ import annotations

import functools
import io
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from crmmaint.errors import BackendError, ObjectNotFound, RepositoryMissing
from crmmaint.repository.backends.base import Backend, ObjectInfo, check_name, check_prefix

logger = logging.getLogger(__name__)

MIN_PART_SIZE = 5 << 20  # S3's minimum for every part but the last
MAX_COPY_SIZE = 5 << 30  # largest single CopyObject
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}


@dataclass
class S3Options:
    """Connection settings; unset credentials fall back to boto3's standard chain."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile: str | None = None
    part_size: int = 16 << 20
    max_attempts: int = 5
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    addressing_style: str = "auto"

    def __post_init__(self) -> None:
        self.part_size = int(self.part_size)
        self.max_attempts = int(self.max_attempts)
        self.connect_timeout = float(self.connect_timeout)
        self.read_timeout = float(self.read_timeout)
        if self.part_size < MIN_PART_SIZE:
            raise BackendError(f"S3 part_size {self.part_size} is below the 5 MiB S3 minimum")
        if self.max_attempts < 1:
            raise BackendError("S3 max_attempts must be at least 1")


class S3Backend(Backend):
    """One bucket and key prefix, e.g. ``s3://backups/crm``."""

    def __init__(self, bucket: str, prefix: str = "", options: S3Options | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.options = options or S3Options()
        self.url = f"s3://{bucket}/{self.prefix}"
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Backend({self.url!r}, endpoint={self._endpoint})"

    @property
    def part_size(self) -> int:
        return self.options.part_size

    @property
    def _endpoint(self) -> str:
        return self.options.endpoint_url or "AWS default endpoint"

    @property
    def client(self) -> Any:
        """The boto3 client (thread-safe), made on first use."""
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        opts = self.options
        config = Config(
            # total_max_attempts counts the first try too (botocore's max_attempts counts retries).
            retries={"total_max_attempts": opts.max_attempts, "mode": "standard"},
            connect_timeout=opts.connect_timeout,
            read_timeout=opts.read_timeout,
            s3={"addressing_style": opts.addressing_style},
        )
        try:
            core = botocore.session.get_session()
            core.register_component("data_loader", _shared_loader())
            session = boto3.session.Session(
                botocore_session=core,
                aws_access_key_id=opts.access_key_id,
                aws_secret_access_key=opts.secret_access_key,
                aws_session_token=opts.session_token,
                profile_name=opts.profile,
            )
            return session.client(
                "s3", endpoint_url=opts.endpoint_url, region_name=opts.region, config=config
            )
        except BotoCoreError as exc:
            raise BackendError(f"cannot set up S3 client for {self.url}: {exc}") from exc

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND | {"NoSuchBucket"}:
                raise self._no_bucket(exc) from exc
            raise self._error(exc, "open") from exc
        except BotoCoreError as exc:
            raise self._error(exc, "open") from exc
        logger.debug("opened %s at %s", self.url, self._endpoint)

    def create(self) -> None:
        """Create the bucket when it is missing; the prefix needs no creation in S3."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND | {"NoSuchBucket"}:
                raise self._error(exc, "open") from exc
        except BotoCoreError as exc:
            raise self._error(exc, "open") from exc
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self.options.region or self.client.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        logger.info("creating bucket %s at %s", self.bucket, self._endpoint)
        self._call("create bucket", None, self.client.create_bucket, **kwargs)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- objects -----------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name, self.url)

    def store(self, name: str, data: bytes) -> None:
        if len(data) > self.part_size:
            self.store_file(name, io.BytesIO(data), len(data))
            return
        self._call(
            "store",
            name,
            self.client.put_object,
            Bucket=self.bucket,
            Key=self._key(name),
            Body=data,
        )

    def store_file(self, name: str, fileobj: BinaryIO, size: int | None = None) -> None:
        """Stream in ``part_size`` parts; a source that fits in one part goes up in one PUT."""
        key = self._key(name)
        first = _read_part(fileobj, self.part_size)
        if len(first) < self.part_size:
            self._call(
                "store", name, self.client.put_object, Bucket=self.bucket, Key=key, Body=first
            )
            return
        upload = self._call(
            "store", name, self.client.create_multipart_upload, Bucket=self.bucket, Key=key
        )
        upload_id = upload["UploadId"]
        logger.debug("multipart upload of %s to %s started", name, self.url)
        try:
            parts: list[dict[str, Any]] = []
            chunk = first
            while chunk:
                number = len(parts) + 1
                answer = self._call(
                    "store",
                    name,
                    self.client.upload_part,
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=chunk,
                )
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
                chunk = b""  # drop the reference before reading the next part: one part in memory
                chunk = _read_part(fileobj, self.part_size)
            self._call(
                "store",
                name,
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            self._abort(name, key, upload_id)
            raise
        logger.debug(
            "multipart upload of %s to %s completed in %d parts", name, self.url, len(parts)
        )

    def _abort(self, name: str, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            logger.debug("aborted multipart upload of %s to %s", name, self.url)
        except (ClientError, BotoCoreError) as exc:
            logger.warning(
                "could not abort multipart upload of %s to %s (%s); a bucket lifecycle rule "
                "for incomplete uploads will reclaim its parts",
                name,
                self.url,
                _describe(exc),
            )

    def load(self, name: str, offset: int = 0, size: int | None = None) -> bytes:
        key = self._key(name)
        if size == 0:
            if self.info(name) is None:
                raise ObjectNotFound(f"object {name} not found in {self.url}")
            return b""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if offset or size is not None:
            end = "" if size is None else str(offset + size - 1)
            kwargs["Range"] = f"bytes={offset}-{end}"
        try:
            answer = self.client.get_object(**kwargs)
            return answer["Body"].read()
        except ClientError as exc:
            if _code(exc) == "InvalidRange":  # offset at or past the end, as a local read gives b""
                if self.info(name) is None:
                    raise ObjectNotFound(f"object {name} not found in {self.url}") from exc
                return b""
            raise self._translate(exc, "load", name) from exc
        except BotoCoreError as exc:
            raise self._translate(exc, "load", name) from exc

    def info(self, name: str) -> ObjectInfo | None:
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise self._translate(exc, "stat", name) from exc
        except BotoCoreError as exc:
            raise self._translate(exc, "stat", name) from exc
        return ObjectInfo(name, int(answer["ContentLength"]))

    def delete(self, name: str) -> None:
        # DeleteObject succeeds on a missing key; the contract says ObjectNotFound.
        if self.info(name) is None:
            raise ObjectNotFound(f"cannot delete {name}: not found in {self.url}")
        self._call(
            "delete", name, self.client.delete_object, Bucket=self.bucket, Key=self._key(name)
        )

    def move(self, src: str, dst: str) -> None:
        """Copy then delete: S3 has no rename. The copy is complete before the source goes."""
        found = self.info(src)
        if found is None:
            raise ObjectNotFound(f"cannot move {src}: not found in {self.url}")
        source = {"Bucket": self.bucket, "Key": self._key(src)}
        if found.size <= MAX_COPY_SIZE:
            self._call(
                "move",
                src,
                self.client.copy_object,
                Bucket=self.bucket,
                Key=self._key(dst),
                CopySource=source,
            )
        else:
            self._copy_multipart(src, dst, source, found.size)
        self._call("move", src, self.client.delete_object, **source)

    def _copy_multipart(self, src: str, dst: str, source: dict[str, str], size: int) -> None:
        key = self._key(dst)
        upload_id = self._call(
            "move", src, self.client.create_multipart_upload, Bucket=self.bucket, Key=key
        )["UploadId"]
        try:
            parts = []
            part_size = max(self.part_size, -(-size // 10_000))
            for number, start in enumerate(range(0, size, part_size), 1):
                end = min(start + part_size, size) - 1
                answer = self._call(
                    "move",
                    src,
                    self.client.upload_part_copy,
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=source,
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"ETag": answer["CopyPartResult"]["ETag"], "PartNumber": number})
            self._call(
                "move",
                src,
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            self._abort(dst, key, upload_id)
            raise

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix, self.url)
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", ()):
                    key = item["Key"]
                    if not key.endswith("/"):  # skip "directory" markers made by other tools
                        yield ObjectInfo(key[len(self.prefix) :], int(item["Size"]))
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, "list", prefix or "/") from exc

    def remove_stale_temp(self, older_than: float) -> int:
        """Abort multipart uploads under the prefix started before ``older_than``: a killed
        writer's parts are billed storage that no listing shows."""
        removed = 0
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for upload in page.get("Uploads", ()):
                    if upload["Initiated"].timestamp() < older_than:
                        self._abort(upload["Key"], upload["Key"], upload["UploadId"])
                        removed += 1
        except (ClientError, BotoCoreError) as exc:
            logger.warning("cannot list unfinished uploads in %s: %s", self.url, exc)
        return removed

    # -- error translation -------------------------------------------------------------------

    def _call(self, action: str, name: str | None, method: Any, **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, action, name) from exc

    def _translate(self, exc: Exception, action: str, name: str | None) -> Exception:
        """Map a botocore error to ``ObjectNotFound`` or a ``BackendError`` that says what to do."""
        if isinstance(exc, ClientError):
            code = _code(exc)
            if code == "NoSuchBucket":
                return self._no_bucket(exc)
            if name is not None and action in ("load", "move") and code in _NOT_FOUND:
                return ObjectNotFound(f"object {name} not found in {self.url}")
        return self._error(exc, action, name)

    def _no_bucket(self, exc: Exception) -> BackendError:
        return RepositoryMissing(
            f"S3 bucket {self.bucket!r} does not exist at {self._endpoint}",
            hint="check the bucket name and region, or run `crmmaint repo init` to create it",
        )

    def _error(self, exc: Exception, action: str, name: str | None = None) -> BackendError:
        what = f"{action} {name} in {self.url}" if name else f"{action} {self.url}"
        where = f"endpoint {self._endpoint}, bucket {self.bucket}"
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return BackendError(
                f"cannot {what}: no S3 credentials found",
                hint="give access_key_id/secret_access_key in the repository options, or set up "
                "the standard AWS credentials (environment, ~/.aws, instance role)",
            )
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            return BackendError(
                f"cannot {what}: S3 endpoint unreachable ({where}) after "
                f"{self.options.max_attempts} attempts: {_describe(exc)}",
                hint="check that the endpoint URL is right and the service is up, and the network "
                "or proxy between",
            )
        code = _code(exc) if isinstance(exc, ClientError) else ""
        if code in _DENIED:
            return BackendError(
                f"cannot {what}: access denied ({where}): {_describe(exc)}",
                hint="check the access key, secret and the bucket policy for this prefix",
            )
        if (isinstance(exc, ClientError) and _status(exc) >= 500) or code in (
            "SlowDown",
            "Throttling",
        ):
            return BackendError(
                f"cannot {what}: S3 kept failing ({where}) after {self.options.max_attempts} "
                f"attempts with retries and backoff: {_describe(exc)}",
                hint="check the endpoint's health and request rate limits, then retry",
            )
        return BackendError(f"cannot {what} ({where}): {_describe(exc)}")


@functools.cache
def _shared_loader() -> botocore.loaders.Loader:
    """One loader for all clients, so the S3 service model is parsed once per process."""
    return botocore.loaders.create_loader()


def _read_part(fileobj: BinaryIO, size: int) -> bytes:
    """Read exactly ``size`` bytes unless the stream ends first (short reads are joined)."""
    data = fileobj.read(size)
    if not data or len(data) == size:
        return data or b""
    pieces = [data]
    got = len(data)
    while got < size:
        more = fileobj.read(size - got)
        if not more:
            break
        pieces.append(more)
        got += len(more)
    return b"".join(pieces)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _describe(exc: Exception) -> str:
    """A one-line reason; botocore's messages name operations and URLs, never credentials."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'error')}: {err.get('Message', '')}".rstrip(": ")
    return str(exc) or type(exc).__name__
