"""One save/load for the project's torch models, after diffusers' `ConfigMixin` + `register_to_config`.

A subclass of `PretrainedMixin` keeps the arguments its `__init__` was called with (`init_arguments`);
`save_pretrained` writes them with the weights to a folder or any fsspec URL (memory://, s3://):
    config.json            the JSON arguments; a model built from one config dataclass stores its fields
    model.safetensors      the state dict
    arguments.safetensors  the tensor arguments (a mesh the model is built on), if it has any
`from_pretrained` calls `__init__` again with them (JSON lists become tuples and dicts dataclasses where the
signature's type hints say so), loads the weights and returns the model in eval mode. JSON and safetensors
only: loading runs no code.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import tempfile
import typing
from typing import Any, Self

import fsspec
import torch

CONFIG_FILE, WEIGHTS_FILE, TENSORS_FILE = "config.json", "model.safetensors", "arguments.safetensors"


class PretrainedMixin:
    """Mixed into a `torch.nn.Module`: `class Model(PretrainedMixin, nn.Module)`."""

    init_arguments: dict[str, Any]  # by name, defaults included

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording(cls.__init__)

    def save_pretrained(self, url: str, **storage_options) -> None:
        config, tensors = _split(_parameters(type(self)), self.init_arguments)
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        fs.makedirs(root, exist_ok=True)
        fs.pipe_file(f"{root}/{CONFIG_FILE}", json.dumps(config, indent=2).encode())
        fs.pipe_file(f"{root}/{WEIGHTS_FILE}", safetensors_bytes(self.state_dict()))
        if tensors:
            fs.pipe_file(f"{root}/{TENSORS_FILE}", safetensors_bytes(tensors))

    @classmethod
    def from_pretrained(cls, url: str, device: str | torch.device = "cpu", **storage_options) -> Self:
        import safetensors.torch

        parameters = _parameters(cls)
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        arguments = _from_config(parameters, json.loads(fs.cat_file(f"{root}/{CONFIG_FILE}")))
        if arguments.keys() != parameters.keys():  # the others are tensors
            arguments |= _tensor_arguments(safetensors.torch.load(fs.cat_file(f"{root}/{TENSORS_FILE}")))
        model = cls(**arguments)
        model.load_state_dict(safetensors.torch.load(fs.cat_file(f"{root}/{WEIGHTS_FILE}")))
        return model.to(device).eval()


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors blob of CPU copies: safetensors refuses tensors that share memory."""
    import safetensors.torch

    return safetensors.torch.save({key: value.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
                                   for key, value in tensors.items()}, metadata=metadata)


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The metadata of a safetensors blob; safetensors reads it from a file only (`safe_open`)."""
    import safetensors

    with tempfile.NamedTemporaryFile(suffix=".safetensors") as file:
        file.write(data)
        file.flush()
        with safetensors.safe_open(file.name, "pt") as blob:
            return blob.metadata() or {}


def _recording(init):
    """`init` keeping its arguments in `self.init_arguments` once it returns: the outermost `__init__` of a
    `super().__init__` chain returns last, so the arguments kept are those of the class built."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        self.init_arguments = dict(list(bound.arguments.items())[1:])

    return recording_init


def _parameters(cls: type) -> dict[str, Any]:
    """`__init__`'s parameters after self -> their type hints."""
    hints = typing.get_type_hints(cls.__init__)
    return {name: hints.get(name, Any) for name in list(inspect.signature(cls.__init__).parameters)[1:]}


def _config_object(parameters: dict[str, Any]) -> str | None:
    """The parameter of an `__init__` that takes one config dataclass: its fields are the config (the
    config.json of the models saved before this mixin)."""
    if len(parameters) == 1:
        ((name, hint),) = parameters.items()
        if dataclasses.is_dataclass(hint):
            return name
    return None


def _split(parameters: dict[str, Any], arguments: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
    """(config.json's content, the tensor arguments as `name`, or `name.key` for a dict of tensors)."""
    config, tensors = {}, {}
    for name, value in arguments.items():
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
            tensors.update({f"{name}.{key}": tensor for key, tensor in value.items()})
        else:
            config[name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    lone = _config_object(parameters)
    return config[lone] if lone else config, tensors


def _from_config(parameters: dict[str, Any], config: Any) -> dict[str, Any]:
    if lone := _config_object(parameters):
        config = {lone: config}
    return {name: _restore(parameters[name], value) for name, value in config.items()}


def _tensor_arguments(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The tensor arguments back from `_split`'s keys."""
    arguments: dict[str, Any] = {}
    for key, tensor in tensors.items():
        name, _, item = key.partition(".")
        if item:
            arguments.setdefault(name, {})[item] = tensor
        else:
            arguments[name] = tensor
    return arguments


def _restore(hint: Any, value: Any) -> Any:
    """A JSON value as its type hint says: a dataclass from its fields, a tuple from a list (JSON has neither)."""
    if dataclasses.is_dataclass(hint):
        fields = typing.get_type_hints(hint)
        return hint(**{name: _restore(fields[name], item) for name, item in value.items()})
    return tuple(value) if typing.get_origin(hint) is tuple else value
