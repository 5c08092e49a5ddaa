"""S3-compatible object storage with conditional writes: the primitives that make artifacts immutable
and the champion pointer a compare-and-swap on the store itself.

- ``create``: PutObject with ``If-None-Match: *``: writes only if the key does not exist (412 otherwise).
- ``read``: the bytes and their ETag; ``entries``: every object under a prefix with its ETag and size.
- ``put``: an unconditional write (mutable records of an ``s3://`` root, components/core/remote.py).
- ``swap``: PutObject with ``If-Match: <etag>``: replaces only the version that was read (412 if it
  changed; 409 when a concurrent conditional write to the same key is in flight: treated the same).
The registry's champion pointer on a store (read with ETag, decide, write with If-Match; on a lost race
re-read and decide again) is components/decide/pointer.py's ``ObjectPointer``.

Tested against SeaweedFS's S3 gateway (tests/stack/test_objectstore.py), which enforces both conditions.
Client settings come from boto3's standard environment (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

# A failed precondition (412) or a concurrent conditional write on the same key (409): both mean
# "someone else's write won", and the caller re-reads.
LOST_RACE = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


class ObjectStoreError(RuntimeError):
    """An object-store call failed for a reason other than a lost race: names bucket, key and the S3 error."""


class ObjectExists(ObjectStoreError):
    """A create-only write found the key already there (artifacts are immutable)."""


class StaleETag(ObjectStoreError):
    """A swap's If-Match no longer holds: another writer replaced the object since it was read."""


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _lost_race(exc: ClientError) -> bool:
    return _code(exc) in LOST_RACE or _status(exc) in (409, 412)


@dataclass(frozen=True)
class Listed:
    etag: str
    size: int


@dataclass(frozen=True)
class Versioned:
    body: bytes
    etag: str


class ObjectStore:
    """One bucket (and key prefix) of an S3-compatible store, with create-only and compare-and-swap writes."""

    def __init__(self, bucket: str, prefix: str = "", client: Any | None = None):
        if client is None:
            import boto3
            client = boto3.client("s3")
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")
        # Checked up front: SeaweedFS's gateway creates a missing bucket on the first PutObject, so a
        # misspelt bucket would otherwise silently start a second, empty artifact store.
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            raise ObjectStoreError(f"s3://{bucket}: bucket not reachable: {_code(exc)} (HTTP {_status(exc)}); "
                                   f"create it or fix the bucket name") from exc

    @classmethod
    def at(cls, uri: str) -> "ObjectStore":
        """The store named by ``s3://bucket/prefix`` (client from boto3's standard environment)."""
        if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
            raise ObjectStoreError(f"{uri!r}: not an object-store location (expected s3://bucket/prefix)")
        bucket, _, prefix = uri[5:].partition("/")
        return cls(bucket, prefix)

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _fail(self, op: str, name: str, exc: ClientError) -> ObjectStoreError:
        return ObjectStoreError(f"s3://{self.bucket}/{self.key(name)}: {op} failed: {_code(exc)} "
                                f"(HTTP {_status(exc)}): {exc.response.get('Error', {}).get('Message', '')}")

    def create(self, name: str, body: bytes) -> str:
        """Write ``name`` only if it does not exist; returns the new ETag. Raises ObjectExists otherwise."""
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key(name), Body=body, IfNoneMatch="*")["ETag"]
        except ClientError as exc:
            if _lost_race(exc):
                raise ObjectExists(f"s3://{self.bucket}/{self.key(name)} already exists (create-only write refused: "
                                   f"{_code(exc)})") from exc
            raise self._fail("create", name, exc) from exc

    def read(self, name: str) -> Versioned | None:
        """The object's bytes and ETag, or None if there is none."""
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key(name))
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise self._fail("read", name, exc) from exc
        return Versioned(got["Body"].read(), got["ETag"])

    def swap(self, name: str, body: bytes, etag: str | None) -> str:
        """Replace ``name`` only if its ETag is still ``etag`` (None: only if it still does not exist);
        returns the new ETag. Raises StaleETag when another writer got there first."""
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key(name), Body=body, **condition)["ETag"]
        except ClientError as exc:
            if _lost_race(exc):
                raise StaleETag(f"s3://{self.bucket}/{self.key(name)} changed since ETag {etag} was read "
                                f"({_code(exc)})") from exc
            raise self._fail("swap", name, exc) from exc

    def put(self, name: str, body: bytes) -> str:
        """Write ``name`` unconditionally (mutable records: a day's CURRENT pointer, a run's outcome);
        returns the new ETag."""
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key(name), Body=body)["ETag"]
        except ClientError as exc:
            raise self._fail("put", name, exc) from exc

    def entries(self, prefix: str = "") -> dict[str, Listed]:
        """Every object under ``prefix``: name (relative to the store's prefix) -> ETag and size."""
        found, token, strip = {}, None, len(self.key("")) if self.prefix else 0
        while True:
            kwargs = {"ContinuationToken": token} if token else {}
            try:
                page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.key(prefix), **kwargs)
            except ClientError as exc:
                raise self._fail("list", prefix, exc) from exc
            for obj in page.get("Contents", []):
                found[obj["Key"][strip:]] = Listed(obj["ETag"], obj["Size"])
            if not page.get("IsTruncated"):
                return dict(sorted(found.items()))
            token = page["NextContinuationToken"]

    def list(self, prefix: str) -> list[str]:
        return list(self.entries(prefix))
