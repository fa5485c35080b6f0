"""Typed configuration: environment settings and per-run configs.

`Settings` says *where* things live (store, Ray, Prefect, S3 credentials) and comes from the environment.
A `RunConfig` says *what* a run makes; it is data (YAML file + `key=value` overrides) and its hash seeds
every sample id, so two runs with the same config make the same dataset.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from hoi_factory.storage import StoreError, check_name
from hoi_factory.suggestions import did_you_mean


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the field and the problem."""


class Settings(BaseSettings):
    """Where the factory reads and writes. Every field comes from the environment (or a `.env` file)."""

    # populate_by_name: code building explicit settings names fields (s3_endpoint_url=...), the environment aliases
    model_config = SettingsConfigDict(env_prefix="HOI_", env_file=".env", extra="ignore", populate_by_name=True)

    store_url: str = Field("./hoi-store", description="Root of the dataset and model store: a folder or s3://bucket/prefix")
    ray_address: str | None = Field(
        None, validation_alias=AliasChoices("HOI_RAY_ADDRESS", "RAY_ADDRESS"), description="Ray cluster; unset = local"
    )
    prefect_api_url: str | None = Field(
        None, validation_alias=AliasChoices("HOI_PREFECT_API_URL", "PREFECT_API_URL"), description="unset = ephemeral"
    )
    s3_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("HOI_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    )
    aws_access_key_id: SecretStr | None = Field(None, validation_alias=AliasChoices("AWS_ACCESS_KEY_ID"))
    aws_secret_access_key: SecretStr | None = Field(None, validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY"))
    store_retry_seconds: float = Field(
        120.0, ge=0, description="how long an unreachable object store is retried before a run fails"
    )
    aws_region: str | None = Field(None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))
    llm_api_key: SecretStr | None = Field(
        None, description="API key of the CHORUS prompt LLM endpoint (HOI_LLM_API_KEY)")
    cache_dir: Path | None = Field(None, validation_alias=AliasChoices("HOI_CACHE"),
                                   description="where models built on first use (the `tiny` stand-ins) are kept")

    def secrets(self) -> list[str]:
        """The secret values these settings hold: scrubbed from every error text (hoi_factory.scrub)."""
        fields = (self.aws_access_key_id, self.aws_secret_access_key, self.llm_api_key)
        return [f.get_secret_value() for f in fields if f is not None]

    def storage_options(self, url: str | None = None) -> dict[str, Any]:
        """fsspec options for `url` (default: the store); credentials stay out of every log, manifest and report."""
        if not (url or self.store_url).startswith("s3://"):
            return {}
        options: dict[str, Any] = {"use_listings_cache": False}  # other processes write shards and manifests
        if self.aws_access_key_id and self.aws_secret_access_key:
            options["key"] = self.aws_access_key_id.get_secret_value()
            options["secret"] = self.aws_secret_access_key.get_secret_value()
        client_kwargs = {}
        if self.s3_endpoint_url:
            client_kwargs["endpoint_url"] = self.s3_endpoint_url
        if self.aws_region:
            client_kwargs["region_name"] = self.aws_region
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
        return options


def _union_args(annotation: Any) -> tuple[Any, ...]:
    """The members of a union annotation (Optional included), or the annotation alone."""
    return typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)


def _number_types(annotation: Any) -> set[type]:
    """int/float named by an annotation (through Optional and unions), unless bool is allowed too."""
    args = _union_args(annotation)
    return set() if bool in args else {a for a in args if a in (int, float)}


def _variants(annotation: Any) -> dict[str, type[Variant]]:
    """kind -> variant, for a field annotated with a union of variants; empty for any other field."""
    return {a.model_fields["kind"].default: a for a in _union_args(annotation)
            if isinstance(a, type) and issubclass(a, Variant)}


def _shorthand(name: str, field: FieldInfo, value: Any) -> Any:
    """A variant written as its kind alone, or as a mapping without one, becomes the mapping pydantic's
    discriminator reads; an unknown kind, or a field of another variant, fails naming the key and the choices."""
    variants = _variants(field.annotation)
    if not variants or not isinstance(value, str | dict):
        return value
    data = {"kind": value} if isinstance(value, str) else value
    if "kind" not in data and not field.is_required():
        data = {"kind": field.get_default(call_default_factory=True).kind, **data}
    kind, choices = data.get("kind"), ", ".join(variants)
    if "kind" not in data:
        raise ValueError(f"{name} needs a kind: one of {choices}")
    if not isinstance(kind, str) or kind not in variants:
        raise ValueError(f"{name} is one of {choices}, not {kind!r}{did_you_mean(str(kind), variants)}")
    own = variants[kind].model_fields
    stray = next((key for key in data if key not in own), None)
    if stray is not None:
        owners = ", ".join(f"{name}={other}" for other, variant in variants.items() if stray in variant.model_fields)
        belongs = f"; {stray} belongs to {owners}" if owners else did_you_mean(stray, own, f"{name}.")
        takes = ", ".join(key for key in own if key != "kind") or "no fields"
        raise ValueError(f"{name}={kind} has no field {stray!r}{belongs} ({name}={kind} takes: {takes})")
    return data


def _typed(name: str, field: FieldInfo, value: Any) -> Any:
    """A value a person typed, for `field`: `true` is not a number, and a variant may be written as its kind."""
    if isinstance(value, bool) and _number_types(field.annotation):
        raise ValueError(f"expected a number, got the boolean {value}")
    return _shorthand(name, field, value)


class ConfigModel(BaseModel):
    """Configs are data a person typed: unknown fields are errors, and `true` is not a number."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _typed_fields(cls, value: Any, info) -> Any:
        return _typed(info.field_name, cls.model_fields[info.field_name], value)


class Variant(BaseModel):
    """One of the shapes a config field can take (an input layout, a backend), with only its own fields.

    Subclasses name themselves with `kind: Literal["name"] = "name"`; the field holding them is annotated with the
    union and `Field(default_factory=TheDefault, discriminator="kind")`. It then reads `source: video` (that variant
    on its defaults), `{kind: video, frame_rate: 2}`, a mapping without `kind` (the default's), and overrides
    `source=video source.frame_rate=2` in either order.
    """

    model_config = ConfigDict(extra="forbid")

    kind: str

    @model_validator(mode="before")
    @classmethod
    def _typed_fields(cls, data: Any) -> Any:
        """ConfigModel's checks, run over the fields here: pydantic's discriminator refuses any before-validator on
        `kind`, which a validator of every field would be."""
        if not isinstance(data, dict):
            return data
        typed = dict(data)
        for name, value in data.items():
            if name in cls.model_fields and name != "kind":
                try:
                    typed[name] = _typed(name, cls.model_fields[name], value)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        return typed


class ExecutionConfig(ConfigModel):
    """How a run executes. Not part of the config hash: executors never change what is made."""

    executor: Literal["auto", "local", "ray"] = Field(
        "auto", description="auto: in-process for small plans (<= local_max_items), Ray otherwise")
    local_max_items: int = Field(64, ge=0, description="the largest plan `auto` runs in-process")
    workers: int = Field(2, ge=1, description="Ray actors per CPU stage group")
    accelerator_workers: int | None = Field(
        None, ge=1, description="Ray actors per GPU (or custom-resource) stage group; default: as many as fit")
    shard_size: int = Field(64, ge=1, description="samples per Parquet shard (the unit of resume)")
    ray_progress_bars: bool = Field(
        False, description="also draw Ray Data's bars (shards through each stage group's pool) beside the "
        "factory's own per-stage bars (samples)")
    batch_retries: int = Field(1, ge=0, description="retries of a failed batch before samples are tried one by one")
    max_error_fraction: float = Field(
        0.01, ge=0, le=1, description="errors (exceptions, not rejects) allowed, as a fraction of the inputs")
    max_errors_floor: int = Field(
        2, ge=0, description="errors always allowed, however small the run (the budget is the larger of the two)")

    def error_budget(self, num_inputs: int) -> int:
        return max(self.max_errors_floor, int(self.max_error_fraction * num_inputs))


class OutputConfig(ConfigModel):
    """Where the result goes. Not part of the config hash either."""

    dataset: str | None = Field(None, description="dataset name; default: the pipeline's name")
    version: str | None = Field(
        None, description="version name; default: resume an interrupted run or take the next vN")

    @field_validator("dataset", "version")
    @classmethod
    def _safe_path_part(cls, name: str | None, info) -> str | None:
        """These names become folders in the store: checked here, before any work."""
        if name is None:
            return None
        try:
            return check_name(name, info.field_name)
        except StoreError as exc:
            raise ValueError(str(exc)) from None


class RunConfig(ConfigModel):
    """Base of every pipeline's config: pipeline fields + `execution` + `output`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    seed: int = Field(0, description="root seed; every sample's seed derives from it via the config hash")
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    def content_dict(self) -> dict[str, Any]:
        """The fields that decide what the run makes."""
        return self.model_dump(mode="json", exclude={"execution", "output"})

    def config_hash(self) -> str:
        canonical = json.dumps(self.content_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


ConfigT = TypeVar("ConfigT", bound=RunConfig)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=3` -> (["a", "b"], 3); the value is read as a YAML scalar so numbers and lists keep their type."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. execution.workers=2)")
    try:
        return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem}); quote it, "
                          f"e.g. {key.strip()}='\"...\"'") from None


def _locate(model: type[BaseModel], loc: typing.Sequence[str | int]
            ) -> tuple[str, FieldInfo | None, list[type[BaseModel]]]:
    """A location in a config as the dotted key a person types (pydantic puts the kind of a variant after its
    field's name: dropped), the field there (None past the fields, e.g. in a list) and the models whose fields
    may follow it."""
    key, models, field, variants = [], [model], None, {}
    for part in loc:
        if part in variants:
            models, variants = [variants[part]], {}
            continue
        key.append(str(part))
        field = next((m.model_fields[part] for m in models if part in m.model_fields), None)
        annotation = field.annotation if field else None
        variants = _variants(annotation)
        models = list(variants.values()) or [a for a in _union_args(annotation)
                                             if isinstance(a, type) and issubclass(a, BaseModel)]
    return ".".join(key), field, models


def _holds_variants(model: type[BaseModel], keys: list[str]) -> bool:
    field = _locate(model, keys)[1]
    return field is not None and bool(_variants(field.annotation))


def _suggest_key(config_class: type[BaseModel], loc: typing.Sequence[str | int]) -> str:
    """'; did you mean execution.workers?' for the unknown key at `loc`, from the fields beside it."""
    parent, _, models = _locate(config_class, loc[:-1])
    fields = [name for model in models for name in model.model_fields if name != "kind"]
    return did_you_mean(str(loc[-1]), fields, f"{parent}." if parent else "")


def _describe(error: ValidationError, config_class: type[BaseModel]) -> str:
    lines = []
    for problem in error.errors():
        where, field, _ = _locate(config_class, problem["loc"])
        value = problem.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        if problem["type"] == "missing" and field is not None and field.description:
            shown = f" ({field.description})"
        if problem["type"] == "extra_forbidden":
            shown += _suggest_key(config_class, problem["loc"])
        lines.append(f"  {where or '(config)'}: {problem['msg']}{shown}")
    return "\n".join(lines)


def load_run_config(
    config_class: type[ConfigT], path: str | Path | None = None, overrides: list[str] | None = None
) -> ConfigT:
    """Build a config from an optional YAML file plus `key=value` overrides; fail naming the bad field."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of fields, not {type(loaded).__name__}")
        data = loaded or {}
    for text in overrides or []:
        keys, value = parse_override(text)
        node = data
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if isinstance(child, str) and _holds_variants(config_class, keys[:depth + 1]):
                child = node[key] = {"kind": child}  # `source=video source.frame_rate=2`
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {key} is not a section")
            node = child
        chosen = node.get(keys[-1])
        if isinstance(value, str) and isinstance(chosen, dict) and chosen.get("kind", value) == value \
                and _holds_variants(config_class, keys):
            value = {**chosen, "kind": value}  # `source.frame_rate=2 source=video` keeps the rate
        node[keys[-1]] = value
    return validate_run_config(config_class, data, source=str(path) if path else "overrides")


def validate_run_config(config_class: type[ConfigT], data: dict[str, Any] | ConfigT, source: str = "config") -> ConfigT:
    if isinstance(data, config_class):
        return data
    try:
        return config_class.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {config_class.__name__} from {source}:\n{_describe(exc, config_class)}") from None


class FieldDoc(typing.NamedTuple):
    """One setting of a config as `hoi-factory run PIPELINE --help` lists it."""

    key: str  # dotted, as typed in an override
    type: str
    default: str  # as typed in an override; "required" when there is none
    description: str


_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return " | ".join(map(str, args))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(map(_type_name, args))
    if args:
        return f"{typing.get_origin(annotation).__name__}[{', '.join(map(_type_name, args))}]"
    return getattr(annotation, "__name__", str(annotation))


def _shown(value: Any) -> str:
    """A default as a person would type it in `key=value` (YAML): text bare, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def field_docs(model: type[BaseModel], prefix: str = "") -> list[FieldDoc]:
    """Every setting of `model`, sections (execution.*) and each variant's own fields (source.frame_rate, for
    source=video) included: dotted key, type with its bounds, default, description."""
    docs = []
    for name, field in model.model_fields.items():
        if name == "kind":
            continue
        key, description = f"{prefix}{name}", field.description or ""
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        variants = _variants(field.annotation)
        if variants:
            docs.append(FieldDoc(key, "one of " + " | ".join(variants), default.kind if default else "required",
                                 description))
            for kind, variant in variants.items():
                docs += [doc._replace(description=f"({key}={kind}) {doc.description}".rstrip())
                         for doc in field_docs(variant, f"{key}.")]
        elif isinstance(default, BaseModel):  # a section: its fields, each with its own default
            docs += field_docs(type(default), f"{key}.")
        else:
            bounds = ", ".join(f"{symbol} {getattr(rule, bound)}" for rule in field.metadata
                               for bound, symbol in _BOUNDS.items() if getattr(rule, bound, None) is not None)
            shown_type = _type_name(field.annotation) + (f" ({bounds})" if bounds else "")
            docs.append(FieldDoc(key, shown_type, "required" if field.is_required() else _shown(default),
                                 description))
    return docs
