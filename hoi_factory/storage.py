"""One fsspec-backed view of the store: local folders and s3:// through the same calls.

Writes are atomic: on a local disk a file is written beside its target and renamed over it; on an object
store a single PUT is already all-or-nothing. An object store that stops answering is retried with backoff
for `retry_seconds` before the operation fails with StoreUnavailable. Names that become paths are checked
here, once.
"""

from __future__ import annotations

import functools
import json
import logging
import posixpath
import re
import uuid
from pathlib import Path
from typing import Any

import fsspec
import tenacity
from fsspec.core import url_to_fs

log = logging.getLogger(__name__)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
TEMP_MARKER = ".tmp-"
PROBE_RETRY_SECONDS = 10.0


class StoreError(RuntimeError):
    """A store operation that cannot go on (missing object, bad name, refused write)."""


class AlreadyExists(StoreError):
    """An exclusive create found the object there already."""


class StoreUnavailable(StoreError):
    """The object store did not answer within the retry budget."""


def _is_transient(error: BaseException) -> bool:
    """Connection-level failures that a later attempt may not meet (not: missing objects, refusals)."""
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:
        return False
    return isinstance(error, (BotoConnectionError, HTTPClientError))


def _refusal(url: str, error: BaseException) -> str | None:
    """What to fix, when an object store refused a request for want of (valid) credentials; None otherwise."""
    try:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError
    except ImportError:
        return None
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return (f"{url}: no S3 credentials found ({error}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE)")
    if isinstance(error, PermissionError):  # s3fs's translation of 403s: bad key, bad signature, access denied
        return (f"{url} refused access ({error}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the "
                "bucket's permissions")
    return None


def _with_retries(store: Store, call, what: str, retry_seconds: float):
    """`call()`, again with exponential backoff (0.5 s doubling to 10 s, tenacity) while an object store is
    unreachable, for up to `retry_seconds`; a refusal of the credentials becomes a StoreError that says what
    to set."""
    def warn(state: tenacity.RetryCallState) -> None:
        log.warning("%s unreachable (%s); retrying %s in %.1f s", store.url, state.outcome.exception(), what,
                    state.next_action.sleep)

    retrying = tenacity.Retrying(retry=tenacity.retry_if_exception(_is_transient),
                                 wait=tenacity.wait_exponential(multiplier=0.5, max=10.0),
                                 stop=tenacity.stop_before_delay(retry_seconds), before_sleep=warn, reraise=True)
    try:
        return retrying(call)
    except Exception as error:
        if (refusal := _refusal(store.url, error)) is not None:
            raise StoreError(refusal) from None
        if _is_transient(error):
            raise StoreUnavailable(
                f"{store.url} did not answer for {retry_seconds:.0f} s ({what}): {error}; check HOI_STORE_URL, "
                "HOI_S3_ENDPOINT_URL and the network (HOI_STORE_RETRY_SECONDS: how long to wait)") from None
        raise


def _retried(method):
    """Run a Store method with `_with_retries` on an object store (for the store's `retry_seconds`)."""

    @functools.wraps(method)
    def wrapper(self: Store, *args, **kwargs):
        if self.is_local:
            return method(self, *args, **kwargs)
        return _with_retries(self, lambda: method(self, *args, **kwargs), method.__name__, self.retry_seconds)

    return wrapper


RESERVED_NAMES = {"latest"}  # `name/latest` means the newest version


def check_name(name: str, what: str = "name") -> str:
    """Dataset, model and version names become path parts: allow letters, digits, '.', '_', '-' only, and none
    the store uses itself (`latest`, `*.json` files beside the versions, temporary files)."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        raise StoreError(
            f"{what} {name!r} is not allowed: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, and no '..'"
        )
    if name in RESERVED_NAMES or name.endswith(".json") or TEMP_MARKER in name:
        raise StoreError(f"{what} {name!r} is reserved by the store (latest, *.json, {TEMP_MARKER}*): choose another")
    return name


_honours_conditional_writes: set[str] = set()  # object stores probed in this process


class Store:
    """A root URL plus the filesystem that serves it. Paths given to methods are relative to the root."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, retry_seconds: float = 120.0,
                 create: bool = True):
        """`create=False` for commands that only read: a local folder that is not there stays not there."""
        self.url = url.rstrip("/") or url
        self.storage_options = storage_options or {}
        self.retry_seconds = retry_seconds
        self.fs, root = url_to_fs(self.url, **self.storage_options)
        self.root = root.rstrip("/")
        self.is_local = "file" in _protocols(self.fs)
        if self.is_local and create:
            self.fs.makedirs(self.root, exist_ok=True)

    @classmethod
    def from_settings(cls, settings, create: bool = True) -> Store:
        return cls(settings.store_url, settings.storage_options(), settings.store_retry_seconds, create)

    def check_usable(self, retry_seconds: float = PROBE_RETRY_SECONDS) -> None:
        """One request before a command does its work: raise a StoreError naming the fix when the store's folder
        or bucket is not there, or an object store has no (valid) credentials or does not answer within
        `retry_seconds` (short: at launch, no answer is more likely a wrong address than an outage)."""
        if self.is_local:
            if not self.fs.isdir(self.root):
                raise StoreError(f"store {self.url} does not exist: set HOI_STORE_URL to your store, or make one "
                                 "with `hoi-factory run` or `hoi-factory demo`")
            return
        bucket = self.root.split("/")[0]

        def probe() -> None:
            try:
                self.fs.ls(self.root, refresh=True)  # the store's own folders: few, and S3 says why it refuses
            except FileNotFoundError:
                self.fs.info(bucket)  # an empty prefix in a bucket that is there is an empty store

        try:
            _with_retries(self, probe, "check", min(retry_seconds, self.retry_seconds))
        except FileNotFoundError:
            raise StoreError(f"{self.url}: bucket {bucket!r} does not exist at "
                             f"{self.storage_options.get('client_kwargs', {}).get('endpoint_url', 'AWS S3')}: "
                             "check HOI_STORE_URL and HOI_S3_ENDPOINT_URL, or create the bucket") from None

    def __repr__(self) -> str:  # never shows storage_options: they may hold credentials
        return f"Store({self.url!r})"

    def __reduce__(self):  # Ray ships stores to workers; rebuild the filesystem there
        return (Store, (self.url, self.storage_options, self.retry_seconds))

    # -- paths -------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def full_url(self, *parts: str) -> str:
        """A URL another tool can open (pandas, Ray Data, a browser for local files)."""
        path = self.path(*parts)
        return path if self.is_local else f"{_protocols(self.fs)[0]}://{path}"

    def link(self, *parts: str) -> str:
        """A URL for people: file:// for local files; object stores keep their own scheme (no signed URL: it
        would carry the access key id into artifacts)."""
        return Path(self.path(*parts)).as_uri() if self.is_local else self.full_url(*parts)

    # -- reads -------------------------------------------------------------------------------------
    @_retried
    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    @_retried
    def read_bytes(self, *parts: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(*parts))
        except FileNotFoundError:
            raise StoreError(f"{self.full_url(*parts)} does not exist") from None

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts))

    def list_dirs(self, *parts: str) -> list[str]:
        """Names of the folders directly under `parts` (empty when there is none)."""
        return self._names("directory", *parts)

    def list_files(self, *parts: str) -> list[str]:
        return self._names("file", *parts)

    @_retried
    def _names(self, kind: str, *parts: str) -> list[str]:
        try:
            entries = self.fs.ls(self.path(*parts), detail=True, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == kind)

    # -- writes ------------------------------------------------------------------------------------
    @_retried
    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Atomically replace the object at `parts` with `data`."""
        target = self.path(*parts)
        if not self.is_local:
            self.fs.pipe_file(target, data)
            return
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        temp = f"{target}{TEMP_MARKER}{uuid.uuid4().hex[:8]}"
        with open(temp, "wb") as handle:
            handle.write(data)
        self.fs.mv(temp, target)  # a rename within one folder: atomic on POSIX

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_bytes(json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), *parts)

    def create_exclusive(self, data: bytes, *parts: str) -> None:
        """Write `data` only if nothing is there yet; raise AlreadyExists otherwise (a lock primitive)."""
        target = self.path(*parts)
        if self.is_local:
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
            try:
                with open(target, "xb") as handle:
                    handle.write(data)
            except FileExistsError:
                raise AlreadyExists(self.full_url(*parts)) from None
            return
        attempts = 0

        @_retried
        def conditional_put(store: Store) -> None:
            nonlocal attempts
            attempts += 1
            store.fs.pipe_file(target, data, mode="create")  # S3 conditional write (If-None-Match: *)

        try:
            conditional_put(self)
        except (FileExistsError, OSError) as exc:
            if not (isinstance(exc, FileExistsError) or "PreconditionFailed" in str(exc) or "412" in str(exc)):
                raise
            # A retried PUT may meet its own first attempt, which landed although its answer was lost.
            if attempts > 1 and self.read_bytes(*parts) == data:
                return
            raise AlreadyExists(self.full_url(*parts)) from None

    def require_conditional_writes(self) -> None:
        """Writers rest on exclusive creates: on an object store, check once per process that a second
        `If-None-Match: *` PUT of one key fails (some S3-compatible servers and proxies drop the header, and two
        writers would then both hold one version). Refuses to go on otherwise."""
        if self.is_local or self.url in _honours_conditional_writes:
            return
        probe = ("_probes", f"conditional-write-{uuid.uuid4().hex}")
        self.create_exclusive(b"first", *probe)
        try:
            self.create_exclusive(b"second", *probe)
        except AlreadyExists:
            _honours_conditional_writes.add(self.url)
        else:
            raise StoreError(
                f"{self.url} ignored a conditional write (If-None-Match: *): a second exclusive create of one key "
                "succeeded, so two runs could both publish one version. Point HOI_STORE_URL / HOI_S3_ENDPOINT_URL "
                "at a server that honours conditional writes (AWS S3, MinIO, moto), not through a proxy that drops "
                "the header; nothing was written")
        finally:
            self.remove(*probe)

    @_retried
    def remove(self, *parts: str) -> None:
        try:
            self.fs.rm(self.path(*parts))
        except FileNotFoundError:
            pass

    @_retried
    def remove_tree(self, *parts: str) -> None:
        try:
            self.fs.rm(self.path(*parts), recursive=True)
        except FileNotFoundError:
            pass

    def remove_temp_files(self, *parts: str) -> int:
        """Delete leftovers of interrupted local writes under `parts`; returns how many went."""
        if not self.is_local:
            return 0
        leftovers = [p for p in self.fs.find(self.path(*parts)) if TEMP_MARKER in posixpath.basename(p)]
        for leftover in leftovers:
            self.fs.rm(leftover)
        return len(leftovers)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
