"""Versioned, immutable folders: `<store>/<area>/<name>/<version>/` (area = datasets or models).

The rules both stores share live here:
- a version exists to readers only once its `manifest.json` is written (the commit point, written last); the
  manifest carries a checksum of its own content, verified on every read;
- `latest` is the published version with the newest manifest; `latest.json` beside the versions is a pointer
  for other tools, repaired whenever it is found stale (a crash between manifest and pointer cannot hide a
  version), and a lock left inside a published version by such a crash is removed when found;
- one writer at a time holds a lease (`_lock.json`, created exclusively); a lease whose process died, or
  whose heartbeat went quiet for `ttl` seconds, may be taken over by a run with the same fingerprint (resume);
- a published version is never written again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

from pydantic import BaseModel

from hoi_factory.storage import AlreadyExists, Store, StoreError, StoreUnavailable, check_name
from hoi_factory.suggestions import did_you_mean

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
LOCK = "_lock.json"
LATEST = "latest.json"
DEFAULT_LEASE_TTL = 120.0
CHECKSUMMED_SINCE = 2  # manifests of this schema version and later carry their own checksum


class VersionBusy(StoreError):
    """Another live run is writing this version."""


class VersionPublished(StoreError):
    """The version is published and immutable."""


class CorruptManifest(StoreError):
    """A manifest that is not valid JSON or does not match its own checksum."""


def manifest_checksum(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its `checksum` field."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def with_checksum(manifest: dict) -> dict:
    canonical = json.loads(json.dumps(manifest, default=str))  # what a reader will parse
    return {**canonical, "checksum": manifest_checksum(canonical)}


@dataclass
class Lease:
    """A writer's hold on one unpublished version, kept fresh by a heartbeat thread."""

    area: VersionedArea
    name: str
    version: str
    fingerprint: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ttl: float = DEFAULT_LEASE_TTL
    lost: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def record(self) -> dict:
        return {
            "run_id": self.run_id,
            "fingerprint": self.fingerprint,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat": time.time(),
        }

    def start_heartbeat(self) -> None:
        threading.Thread(target=self._beat, name=f"lease-{self.name}-{self.version}", daemon=True).start()

    def _beat(self) -> None:
        lock = self.area.parts(self.name, self.version, LOCK)
        while not self._stop.wait(self.ttl / 4):
            try:
                current = self.area.store.read_json(*lock)
                if current.get("run_id") != self.run_id:
                    self.lost = "another run took over this version's lease"
                    return
                self.area.store.write_json(self.record(), *lock)
            except StoreUnavailable as exc:  # the next beat tries again; the run's own writes will fail too
                log.warning("lease heartbeat of %s/%s skipped: %s", self.name, self.version, exc)
            except StoreError:
                self.lost = "this version's lease file disappeared"
                return

    def check(self) -> None:
        if self.lost:
            raise VersionBusy(f"{self.name}/{self.version}: {self.lost}")

    def abandon(self) -> None:
        """The run failed: stop the heartbeat and mark the lease stale at once, so a retry can resume."""
        self._stop.set()
        _ended_in_this_process.add(self.run_id)  # even if the store cannot be told right now
        record = {**self.record(), "heartbeat": 0}
        try:
            self.area.store.write_json(record, *self.area.parts(self.name, self.version, LOCK))
        except Exception as exc:  # the run is failing already; an old heartbeat expires by itself
            log.warning("could not mark the lease of %s/%s stale: %s", self.name, self.version, exc)

    def release(self) -> None:
        self._stop.set()
        for leftover in self.area.store.list_files(*self.area.parts(self.name, self.version)):
            if leftover == LOCK or leftover.startswith("_takeover."):
                self.area.store.remove(*self.area.parts(self.name, self.version, leftover))


_ended_in_this_process: set[str] = set()


def _is_alive(record: dict, ttl: float) -> bool:
    if record.get("run_id") in _ended_in_this_process:
        return False
    if time.time() - float(record.get("heartbeat", 0)) > ttl:
        return False
    if record.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class VersionedArea:
    """The versions of every name in one area of the store."""

    def __init__(self, store: Store, area: str):
        self.store = store
        self.area = area

    def parts(self, *more: str) -> tuple[str, ...]:
        return (self.area, *more)

    # -- reading -----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return [n for n in self.store.list_dirs(self.area) if self.versions(n)]

    def versions(self, name: str) -> list[str]:
        """Published versions, oldest first."""
        check_name(name, f"{self.area[:-1]} name")
        found = [v for v in self.store.list_dirs(*self.parts(name)) if self.is_published(name, v)]
        return sorted(found, key=_version_sort_key)

    def is_published(self, name: str, version: str) -> bool:
        return self.store.exists(*self.parts(name, version, MANIFEST))

    def read_manifest(self, name: str, version: str = "latest") -> dict:
        """The manifest, its checksum verified (CorruptManifest names the file otherwise)."""
        check_name(name, f"{self.area[:-1]} name")
        if version == "latest":
            version = self.latest(name)
        check_name(version, "version")
        if not self.is_published(name, version):
            raise self._not_published(name, version)
        where = self.store.full_url(*self.parts(name, version, MANIFEST))
        try:
            manifest = self.store.read_json(*self.parts(name, version, MANIFEST))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptManifest(f"{where} is not valid JSON ({exc})") from None
        if not isinstance(manifest, dict):
            raise CorruptManifest(f"{where} is not a manifest (a JSON object)")
        if "checksum" not in manifest and manifest.get("schema_version", 1) < CHECKSUMMED_SINCE:
            log.warning("%s predates manifest checksums: read unverified", where)  # stores made before them
            return manifest
        if manifest.get("checksum") != manifest_checksum(manifest):
            raise CorruptManifest(f"{where} does not match its checksum: it was changed after publication")
        return manifest

    def _not_published(self, name: str, version: str | None = None) -> StoreError:
        """The error for a name (or version) that is not there, with the closest one and those that are."""
        versions = self.versions(name)
        if version is not None and versions:
            return StoreError(f"{self.area[:-1]} {name}/{version} is not published in {self.store.url}"
                              f"{did_you_mean(version, versions)} (published versions: {', '.join(versions)})")
        names = self.names()
        shown = ", ".join(names[:30]) + (f" and {len(names) - 30} more" if len(names) > 30 else "")
        return StoreError(f"no published version of {self.area[:-1]} {name!r} in {self.store.url}"
                          f"{did_you_mean(name, names)} ({self.area} there: {shown or 'none'})")

    def latest(self, name: str) -> str:
        """The published version with the newest manifest; repairs a stale `latest.json` on the way."""
        versions = self.versions(name)
        if not versions:
            raise self._not_published(name)
        newest = max(versions, key=lambda v: (self._created(name, v), _version_sort_key(v)))
        try:
            pointer = self.store.read_json(*self.parts(name, LATEST)).get("version")
        except (StoreError, json.JSONDecodeError, AttributeError):
            pointer = None
        if pointer != newest:
            log.warning("%s %s: latest.json said %s, the newest manifest is %s; repairing the pointer",
                        self.area[:-1], name, pointer, newest)
            try:
                self.store.write_json({"version": newest}, *self.parts(name, LATEST))
            except StoreError as exc:  # a reader without write access still gets the right answer
                log.warning("could not repair latest.json of %s: %s", name, exc)
        return newest

    def _created(self, name: str, version: str) -> str:
        try:
            return str(self.store.read_json(*self.parts(name, version, MANIFEST)).get("created", ""))
        except (StoreError, json.JSONDecodeError, AttributeError):
            return ""

    def repair(self, name: str, version: str) -> None:
        """Finish what a crash after a manifest left undone: no lock inside a published version, `latest`."""
        for leftover in self.store.list_files(*self.parts(name, version)):
            if leftover == LOCK or leftover.startswith("_takeover."):
                log.warning("removing %s left inside published %s/%s", leftover, name, version)
                self.store.remove(*self.parts(name, version, leftover))
        self.latest(name)

    # -- writing -----------------------------------------------------------------------------------
    def next_version(self, name: str) -> str:
        numbers = [int(m.group(1)) for v in self.store.list_dirs(*self.parts(name))
                   if (m := re.fullmatch(r"v(\d+)", v))]
        return f"v{max(numbers, default=0) + 1}"

    def find_resumable(self, name: str, fingerprint: str) -> str | None:
        """An unpublished version left by a dead run with this fingerprint, if any."""
        for version in self.store.list_dirs(*self.parts(name)):
            if self.is_published(name, version):
                continue
            try:
                record = self.store.read_json(*self.parts(name, version, LOCK))
            except (StoreError, json.JSONDecodeError):
                continue
            if record.get("fingerprint") == fingerprint and not _is_alive(record, DEFAULT_LEASE_TTL):
                return version
        return None

    def find_published(self, name: str, fingerprint: str) -> str | None:
        """A published version of this exact run (repaired if a crash interrupted its publication)."""
        for version in reversed(self.versions(name)):
            if self.store.read_json(*self.parts(name, version, MANIFEST)).get("fingerprint") == fingerprint:
                self.repair(name, version)
                return version
        return None

    def acquire(self, name: str, version: str, fingerprint: str, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        """Take the writer's lease on an unpublished version, or resume one whose writer died."""
        check_name(name, f"{self.area[:-1]} name")
        check_name(version, "version")
        where = f"{self.area[:-1]} {name}/{version}"
        if self.is_published(name, version):
            raise VersionPublished(f"{where} is published and immutable; choose another version")
        self.store.require_conditional_writes()
        lease = Lease(self, name, version, fingerprint, ttl=ttl)
        lock = self.parts(name, version, LOCK)
        try:
            self.store.create_exclusive(json.dumps(lease.record()).encode(), *lock)
        except AlreadyExists:
            try:
                holder = self.store.read_json(*lock)
            except (StoreError, json.JSONDecodeError) as exc:
                raise VersionBusy(f"{where} is being claimed by another run ({exc})") from None
            if _is_alive(holder, ttl):
                raise VersionBusy(
                    f"{where} is being written by another run (host {holder.get('host')}, pid {holder.get('pid')})"
                ) from None
            if holder.get("fingerprint") != fingerprint:
                raise VersionBusy(
                    f"{where} holds an interrupted run of a different config or input; "
                    "choose another version, or re-run with the original config to resume it"
                ) from None
            try:  # only one run can claim a given dead holder
                self.store.create_exclusive(b"", *self.parts(name, version, f"_takeover.{holder['run_id']}"))
            except AlreadyExists:
                raise VersionBusy(f"{where} was just resumed by another run") from None
            self.store.write_json(lease.record(), *lock)
        if self.store.read_json(*lock).get("run_id") != lease.run_id:  # read back: another writer's lock won
            raise VersionBusy(f"{where} was just claimed by another run")
        lease.start_heartbeat()
        return lease

    def publish(self, lease: Lease, manifest: dict) -> None:
        """The commit point: manifest (exclusively), then the latest pointer, then the lease goes."""
        lease.check()
        parts = self.parts(lease.name, lease.version)
        self.store.remove_temp_files(*parts)
        body = json.dumps(with_checksum(manifest), indent=2, sort_keys=True).encode()
        try:
            self.store.create_exclusive(body, *parts, MANIFEST)
        except AlreadyExists:
            raise VersionPublished(f"{self.area[:-1]} {lease.name}/{lease.version} was published meanwhile") from None
        self.store.write_json({"version": lease.version}, *self.parts(lease.name, LATEST))
        lease.release()


def _version_sort_key(version: str) -> tuple:
    match = re.fullmatch(r"v(\d+)", version)
    return (0, int(match.group(1)), "") if match else (1, 0, version)


V = TypeVar("V")


class VersionedStore(Generic[V]):
    """What the dataset and model stores share: listing and opening published versions of an area."""

    area_name: ClassVar[str]
    manifest_class: ClassVar[type[BaseModel]]
    version_class: ClassVar[type]

    def __init__(self, store: Store):
        self.store = store
        self.area = VersionedArea(store, self.area_name)

    def names(self) -> list[str]:
        return self.area.names()

    def versions(self, name: str) -> list[str]:
        return self.area.versions(name)

    def open(self, name: str, version: str = "latest") -> V:
        manifest = self.manifest_class.model_validate(self.area.read_manifest(name, version))
        return self.version_class(self.store, manifest)

    def open_ref(self, ref: str) -> V:
        """Open `name` (its latest version) or `name/version`."""
        name, _, version = ref.partition("/")
        return self.open(name, version or "latest")
