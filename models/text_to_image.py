"""Text-to-image through diffusers: real weights by hub id or local folder, or `tiny`, built here.

`load_text_to_image("CompVis/stable-diffusion-v1-4")` is the CHORUS setting (with 512 px, 50 steps, CFG 7.5,
see `SD14`). `tiny` is a Stable-Diffusion-shaped pipeline (UNet, VAE, CLIP text encoder, PNDM scheduler) with
random weights and a byte-level tokenizer, written once with `save_pretrained` and loaded back through the
same `from_pretrained` call as real weights: it exercises every line of the real path in seconds, offline.
Its images are noise, not pictures. Weights load from safetensors only (no pickled checkpoints).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hoi_factory.optional import require

TINY = "tiny"


@dataclass(frozen=True)
class Sampling:
    steps: int
    guidance_scale: float
    size: int


SD14 = Sampling(steps=50, guidance_scale=7.5, size=512)  # DESIGN 5.1


def tiny_cache_folder() -> Path:
    return Path(os.environ.get("HOI_CACHE", Path.home() / ".cache" / "hoi-factory")) / "tiny-text-to-image"


def _byte_level_vocabulary() -> tuple[dict[str, int], list[str]]:
    """CLIP's byte-to-unicode alphabet, each symbol alone and word-final, plus the two special tokens; no merges."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    codes = printable + [256 + i for i in range(256 - len(printable))]
    symbols = [chr(c) for c in codes]
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, []


def build_tiny(folder: Path, seed: int = 0) -> Path:
    """Writes the `tiny` pipeline to `folder` (save_pretrained) and returns it."""
    diffusers = require("diffusers", "diffusion", "the text-to-image source")
    transformers = require("transformers", "diffusion", "the text-to-image source")
    torch.manual_seed(seed)
    vocab, merges = _byte_level_vocabulary()
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"]))
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8)
    scheduler = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    pipeline = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                                 scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def load_text_to_image(source: str, device: str = "cpu"):
    """A diffusers text-to-image pipeline from a hub id, a local folder, or `tiny` (built on first use)."""
    diffusers = require("diffusers", "diffusion", "the text-to-image source")
    if source == TINY:
        folder = tiny_cache_folder()
        if not (folder / "model_index.json").is_file():
            build_tiny(folder)
        source = str(folder)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipeline = diffusers.DiffusionPipeline.from_pretrained(source, dtype=dtype, use_safetensors=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def generate(pipeline, prompts: list[str], seeds: list[int], sampling: Sampling) -> list[np.ndarray]:
    """One image per prompt, each from its own seed (so a sample is the same whatever batch it lands in)."""
    generators = [torch.Generator(pipeline.device).manual_seed(seed) for seed in seeds]
    images = pipeline(prompts, num_inference_steps=sampling.steps, guidance_scale=sampling.guidance_scale,
                      height=sampling.size, width=sampling.size, generator=generators, output_type="np").images
    return [np.round(np.clip(image, 0, 1) * 255).astype(np.uint8) for image in images]
