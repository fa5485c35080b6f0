"""Diffusion pipelines through diffusers: text-to-image (CHORUS), inpainting and image-to-image (HO3Pairs).

Real weights load by hub id or local folder: `load_diffusion("CompVis/stable-diffusion-v1-4", "text-to-image")`
is the CHORUS setting (with 512 px, 50 steps, CFG 7.5, see `SD14`). `tiny` is a Stable-Diffusion-shaped
pipeline (UNet, VAE, CLIP text encoder, PNDM scheduler) with random weights and a byte-level tokenizer, written
once with `save_pretrained` and loaded back through the same `from_pretrained` call as real weights: it
exercises every line of the real path in seconds, offline. Its images are noise, not pictures. Weights load
from safetensors only (no pickled checkpoints). Not models/pretrained.py's mixin: these are diffusers pipelines,
saved and loaded in diffusers' own folder layout.

SDEdit runs every step of its schedule below the start timestep, as the official Affordance Diffusion code
does, by stretching the schedule diffusers' image-to-image cuts from (`sdedit_schedule_length`).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from hoi_factory.optional import require

TINY = "tiny"
Task = Literal["text-to-image", "inpainting", "image-to-image", "repaint"]


@dataclass(frozen=True)
class Sampling:
    steps: int
    guidance_scale: float
    size: int


SD14 = Sampling(steps=50, guidance_scale=7.5, size=512)  # CHORUS: SD v1.4, 512 px, 50 steps, CFG 7.5


DEFAULT_CACHE = Path.home() / ".cache" / "hoi-factory"  # Settings.cache_dir (HOI_CACHE) overrides it


def tiny_cache_folder(task: Task = "text-to-image", cache_dir: Path | None = None) -> Path:
    """Where `tiny` is built; image-to-image reuses the text-to-image weights, as real SD checkpoints do."""
    kind = task if task in ("inpainting", "repaint") else "text-to-image"
    return Path(cache_dir or DEFAULT_CACHE) / f"tiny-{kind}"


def _byte_level_vocabulary() -> tuple[dict[str, int], list[str]]:
    """CLIP's byte-to-unicode alphabet, each symbol alone and word-final, plus the two special tokens; no merges."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    codes = printable + [256 + i for i in range(256 - len(printable))]
    symbols = [chr(c) for c in codes]
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, []


def build_tiny(folder: Path, task: Task = "text-to-image", seed: int = 0) -> Path:
    """Writes the `tiny` pipeline for `task` to `folder` (save_pretrained) and returns it."""
    diffusers = require("diffusers", "diffusion", "diffusion models")
    transformers = require("transformers", "diffusion", "diffusion models")
    torch.manual_seed(seed)
    if task == "repaint":  # an unconditional pixel-space DDPM, as RePaint uses
        unet = diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                                     block_out_channels=(16, 32), down_block_types=("DownBlock2D",) * 2,
                                     up_block_types=("UpBlock2D",) * 2, norm_num_groups=8)
        diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(
            folder, safe_serialization=True)
        return folder
    vocab, merges = _byte_level_vocabulary()
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"]))
    unet = diffusers.UNet2DConditionModel(
        # inpainting UNets also see the mask and the masked image's latents: 4 + 1 + 4 channels
        sample_size=8, in_channels=9 if task == "inpainting" else 4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8)
    scheduler = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    pipeline_class = (diffusers.StableDiffusionInpaintPipeline if task == "inpainting"
                      else diffusers.StableDiffusionPipeline)
    pipeline = pipeline_class(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                                 scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def _tiny(task: Task, cache_dir: Path | None) -> Path:
    """The cached `tiny` folder, built on first use into a temporary folder and renamed into place, so workers
    starting together never see (or load) half a model."""
    folder = tiny_cache_folder(task, cache_dir)
    if not (folder / "model_index.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
            built = build_tiny(Path(scratch) / "model", task)
            try:
                os.rename(built, folder)
            except OSError:  # another worker got there first: its copy is complete
                pass
    return folder


def load_diffusion(source: str, task: Task, device: str = "cpu", cache_dir: Path | None = None):
    """A diffusers pipeline for `task` from a hub id, a local folder, or `tiny` (built on first use in
    `cache_dir`)."""
    diffusers = require("diffusers", "diffusion", "diffusion models")
    if source == TINY:
        source = str(_tiny(task, cache_dir))
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    if task == "repaint":  # any unconditional DDPM folder (DDPMPipeline layout) with RePaint's scheduler
        scheduler = diffusers.RePaintScheduler.from_pretrained(source, subfolder="scheduler")
        pipeline = diffusers.RePaintPipeline.from_pretrained(source, scheduler=scheduler, dtype=dtype,
                                                             use_safetensors=True)
    else:
        auto = {"text-to-image": diffusers.AutoPipelineForText2Image, "inpainting": diffusers.AutoPipelineForInpainting,
                "image-to-image": diffusers.AutoPipelineForImage2Image}[task]
        pipeline = auto.from_pretrained(source, dtype=dtype, use_safetensors=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)



def _generators(pipeline, seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator(pipeline.device).manual_seed(seed) for seed in seeds]


def _to_uint8(images: np.ndarray) -> list[np.ndarray]:
    return [np.round(np.clip(image, 0, 1) * 255).astype(np.uint8) for image in images]


def generate(pipeline, prompts: list[str], seeds: list[int], sampling: Sampling) -> list[np.ndarray]:
    """One image per prompt, each from its own seed (so a sample is the same whatever batch it lands in)."""
    images = pipeline(prompts, num_inference_steps=sampling.steps, guidance_scale=sampling.guidance_scale,
                      height=sampling.size, width=sampling.size, generator=_generators(pipeline, seeds),
                      output_type="np").images
    return _to_uint8(images)


def inpaint(pipeline, images: list[np.ndarray], masks: list[np.ndarray], prompts: list[str], seeds: list[int],
            sampling: Sampling) -> list[np.ndarray]:
    """Repaints the masked pixels of each image (uint8, square, `sampling.size`); the others are kept exactly
    (the pipeline's output passes through the VAE everywhere, so it is pasted back inside the mask only)."""
    from PIL import Image

    out = pipeline(prompts, image=[Image.fromarray(i) for i in images],
                   mask_image=[Image.fromarray(m.astype(np.uint8) * 255) for m in masks],
                   num_inference_steps=sampling.steps, guidance_scale=sampling.guidance_scale, height=sampling.size,
                   width=sampling.size, generator=_generators(pipeline, seeds), output_type="np").images
    return [np.where(mask[..., None], painted, image) for image, mask, painted in zip(images, masks, _to_uint8(out))]


def repaint(pipeline, images: list[np.ndarray], masks: list[np.ndarray], seeds: list[int], steps: int,
            jump_length: int, resamples: int) -> list[np.ndarray]:
    """RePaint (Lugmayr et al. 2022), as FusionNet uses it: an unconditional DDPM denoises the masked pixels
    while the known ones are re-noised from the image at every step, going back `jump_length` steps
    `resamples` times to harmonize the two. One image at a time (its own seed); known pixels are kept."""
    from PIL import Image

    results = []
    for image, mask, seed in zip(images, masks, seeds):
        out = pipeline(image=Image.fromarray(image), mask_image=Image.fromarray((~mask).astype(np.uint8) * 255),
                       num_inference_steps=steps, jump_length=jump_length, jump_n_sample=resamples,
                       generator=torch.Generator(pipeline.device).manual_seed(seed), output_type="np").images
        results.append(np.where(mask[..., None], _to_uint8(out)[0], image))
    return results


def sdedit_schedule_length(steps: int, strength: float, train_timesteps: int) -> int:
    """The schedule length N to ask image-to-image for so that SDEdit denoises through `steps` steps below
    t = strength x T, as the official code does (noise to t = 50/1000, then every step down to 0).

    diffusers runs only the last int(N x strength) steps of an N-step schedule, so asking for `steps` gives
    int(steps x strength) of them (2 of 50 at strength 0.05); stretching the schedule to N = steps / strength
    puts `steps` of its steps in [0, strength x T). N stops at T: then every training step below it runs."""
    if strength * train_timesteps < 1:
        raise ValueError(f"SDEdit strength {strength} noises to less than one of the model's {train_timesteps} "
                         "training steps")
    length = math.ceil(steps / strength - 1e-9)
    if int(length * strength) < steps:  # N x strength computed in floating point (0.29 x 100 = 28.999...)
        length += 1
    return min(length, train_timesteps)


def sdedit(pipeline, images: list[np.ndarray], prompts: list[str], seeds: list[int], strength: float,
           sampling: Sampling) -> list[np.ndarray]:
    """SDEdit: noise each image to `strength` of the diffusion process and denoise it (image-to-image) through
    `sampling.steps` steps below that timestep."""
    from PIL import Image

    length = sdedit_schedule_length(sampling.steps, strength, pipeline.scheduler.config.num_train_timesteps)
    out = pipeline(prompts, image=[Image.fromarray(i) for i in images], strength=strength,
                   num_inference_steps=length, guidance_scale=sampling.guidance_scale,
                   generator=_generators(pipeline, seeds), output_type="np").images
    return _to_uint8(out)
