"""The model store: versioned, immutable checkpoints with the same guarantees as datasets.

    <store>/models/<name>/<version>/
        model.safetensors (or a diffusers-style save_pretrained folder's files)
        config.json, metrics.json, README.md (the model card)
        manifest.json      written last: files with checksums, the dataset versions trained on
    <store>/models/<name>/latest.json

Weights are read with safetensors only: no pickle runs on a file from the store.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from hoi_factory import ids
from hoi_factory.storage import Store, StoreError
from hoi_factory.versions import VersionedStore

AREA = "models"
WEIGHTS = "model.safetensors"


class ModelFile(BaseModel):
    sha256: str
    size: int


class ModelManifest(BaseModel):
    schema_version: int = 2  # 2: the manifest carries its own checksum (hoi_factory.versions)
    name: str
    version: str
    created: str
    fingerprint: str
    files: dict[str, ModelFile]
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    datasets: list[str] = Field(default_factory=list)


def _check_relative(path: str) -> str:
    parts = Path(path).parts
    if not parts or Path(path).is_absolute() or any(p in ("..", "") for p in parts):
        raise StoreError(f"model file name {path!r} must be a relative path inside the model folder")
    return "/".join(parts)


class ModelVersion:
    def __init__(self, store: Store, manifest: ModelManifest):
        self.store = store
        self.manifest = manifest
        self.name = manifest.name
        self.version = manifest.version

    def __repr__(self) -> str:
        return f"ModelVersion({self.name}/{self.version}, {len(self.manifest.files)} files)"

    @property
    def url(self) -> str:
        return self.store.full_url(AREA, self.name, self.version)

    def read_bytes(self, file: str) -> bytes:
        """A file's bytes, checked against the manifest's checksum."""
        if file not in self.manifest.files:
            raise StoreError(f"model {self.name}/{self.version} has no file {file!r} "
                             f"(has {sorted(self.manifest.files)})")
        data = self.store.read_bytes(AREA, self.name, self.version, file)
        if hashlib.sha256(data).hexdigest() != self.manifest.files[file].sha256:
            raise StoreError(f"model {self.name}/{self.version}: {file} does not match its checksum")
        return data

    def load_state_dict(self, file: str = WEIGHTS) -> dict:
        import safetensors.torch  # lazy: torch is slow to import and most callers never need it

        return safetensors.torch.load(self.read_bytes(file))

    def download(self, folder: str | Path) -> Path:
        """Copy every file into a local folder (e.g. for a diffusers `from_pretrained`)."""
        folder = Path(folder)
        for file in self.manifest.files:
            target = folder / file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read_bytes(file))
        return folder

    def validate(self) -> list[str]:
        problems = []
        for file in self.manifest.files:
            try:
                self.read_bytes(file)
            except StoreError as exc:
                problems.append(str(exc))
        return problems


class ModelStore(VersionedStore[ModelVersion]):
    """List, open and publish model versions in a store."""

    area_name = AREA
    manifest_class = ModelManifest
    version_class = ModelVersion

    def save(self, name: str, files: dict[str, bytes], config: dict | None = None, metrics: dict | None = None,
             datasets: list[str] | None = None, card: str | None = None, version: str | None = None) -> ModelVersion:
        """Publish `files` as a new version. Identical content re-saved under no version name is not duplicated."""
        files = {_check_relative(path): data for path, data in files.items()}
        config, metrics, datasets = config or {}, metrics or {}, datasets or []
        extras = {"config.json": json.dumps(config, indent=2, sort_keys=True).encode() if config else None,
                  "metrics.json": json.dumps(metrics, indent=2, sort_keys=True).encode(),
                  "README.md": card.encode() if card else None}
        for path, data in extras.items():
            if data is not None and path in files:
                raise StoreError(f"model {name}: {path} is given both as a file and as an argument")
            if data is not None:
                files[path] = data
        checksums = {path: ModelFile(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
                     for path, data in files.items()}
        fingerprint = ids.fingerprint({"files": {p: f.sha256 for p, f in checksums.items()}, "datasets": datasets})
        if version is None:
            if same := self.area.find_published(name, fingerprint):
                return self.open(name, same)
            version = self.area.find_resumable(name, fingerprint) or self.area.next_version(name)
        lease = self.area.acquire(name, version, fingerprint)
        try:
            for path, data in files.items():
                self.store.write_bytes(data, AREA, name, version, path)
            manifest = ModelManifest(name=name, version=version, created=datetime.now(timezone.utc).isoformat(),
                                     fingerprint=fingerprint, files=checksums, config=config, metrics=metrics,
                                     datasets=datasets)
            self.area.publish(lease, manifest.model_dump())
        except BaseException:
            lease.abandon()
            raise
        return ModelVersion(self.store, manifest)

    def save_state_dict(self, name: str, state_dict: dict, **kwargs) -> ModelVersion:
        import safetensors.torch

        tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
        return self.save(name, {WEIGHTS: safetensors.torch.save(tensors)}, **kwargs)

    def save_folder(self, name: str, folder: str | Path, **kwargs) -> ModelVersion:
        """Publish every file of a local folder, e.g. what a diffusers pipeline's `save_pretrained` wrote."""
        folder = Path(folder)
        if not folder.is_dir():
            raise StoreError(f"model folder {folder} does not exist")
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.save(name, files, **kwargs)

