"""The one on-disk form of the project's torch models: `config.json` + `model.safetensors` in a folder or under
any fsspec URL (s3:// included), what each model's `save_pretrained` / `from_pretrained` read and write."""

from __future__ import annotations

import json
from typing import Any

import fsspec
import torch

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def save_pretrained(module: torch.nn.Module, config: dict[str, Any], folder: str, **storage_options) -> None:
    import safetensors.torch

    fs, root = fsspec.core.url_to_fs(folder, **storage_options)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(f"{root}/{CONFIG_FILE}", json.dumps(config, indent=2).encode())
    fs.pipe_file(f"{root}/{WEIGHTS_FILE}", safetensors.torch.save(
        {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}))


def load_pretrained(url: str, **storage_options) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, state dict) of a saved model; safetensors only, so loading runs no code."""
    import safetensors.torch

    fs, root = fsspec.core.url_to_fs(url, **storage_options)
    return (json.loads(fs.cat_file(f"{root}/{CONFIG_FILE}")),
            safetensors.torch.load(fs.cat_file(f"{root}/{WEIGHTS_FILE}")))
