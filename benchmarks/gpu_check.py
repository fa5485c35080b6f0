"""GPU check: the CUDA paths of the project measured in one run, by hand, on a machine with one CUDA GPU.

Prints ONE JSON object on stdout (everything else goes to stderr) and writes it to `--out`. Each section holds
its figures, or {"skipped": reason}, or {"error": message}: one failing check never loses the others.

- gsplat_parity: the torch-vs-gsplat rasterizer parity test (tests/hogsa/test_gaussians.py) through pytest,
  and the same comparison run here for its max abs differences.
- hogsa_ms_per_image: HOGSA ms per augmented 224 x 224 image (POM excluded, as the paper's 0.06 s) at ~10k
  Gaussians, benchmarks/hogsa.py's scene and stages on the device (gsplat backend when it is installed).
- text_to_image: diffusers images/s, fp16 on CUDA: (a) the `tiny` SD-shaped pipeline through `generate`, as the
  views stage runs it (batch 8, 50 steps, 512 px); (b) a full-size SD-v1.5-shaped UNet with random weights at
  512 px (64 x 64 latents): UNet + DDIM steps with classifier-free guidance timed over a few steps and
  extrapolated to 50 (no text encoder, no VAE decode).
- detection: torchvision Mask R-CNN and Keypoint R-CNN (the project's architectures, random weights) images/s on
  batches of 8 512 x 512 images (random weights keep ~100 detections per image: the heads at their full load).
- chorus_aggregation: CHORUS occupancy aggregation (models/chorus/aggregate.py) views/s at 48^3 on
  benchmarks/chorus_aggregation.py's stand-in views, masks already on the device and as numpy masks (copied
  per view), with the largest difference from the CPU result.

Every timing: a warm-up, then `repeats` runs (synchronized on CUDA): median, min and max. `--device cpu
--quick` is a smoke run with tiny sizes (about a minute on two cores). Without CUDA and with --device cuda, every
section is skipped ("no CUDA device") and the exit status is 0; otherwise it is 1 when a section has an error or
the parity test fails.

    python -m benchmarks.gpu_check [--device cuda|cpu] [--quick] [--out benchmarks/results/gpu_check.json]
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("gsplat_parity", "hogsa_ms_per_image", "text_to_image", "detection", "chorus_aggregation")
PARITY_TEST = "tests/hogsa/test_gaussians.py::test_torch_backend_matches_gsplat"
GSPLAT_MISSING = "gsplat is not installed (pip install 'hoi-factory[gsplat]')"

# SD 1.5's UNet (runwayml/stable-diffusion-v1-5 unet/config.json), random weights.
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
# The same block layout, narrow and shallow: the smoke run's stand-in.
SD15_UNET_QUICK = {**SD15_UNET, "sample_size": 8, "layers_per_block": 1, "block_out_channels": (32, 64, 64, 64)}
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                    set_alpha_to_one=False, steps_offset=1)
GUIDANCE = 7.5
EXTRAPOLATED_STEPS = 50


@dataclass(frozen=True)
class Sizes:
    repeats: int
    hogsa_scene: tuple[int, int]  # benchmarks.hogsa.SCENES: (icosphere subdivisions, Gaussians per face)
    hogsa_size: int
    hogsa_samples: int  # augmented images per repeat
    tiny_batch: int
    tiny_steps: int
    tiny_size: int
    sd_batch: int
    sd_steps: int
    sd_latent: int
    detection_batch: int
    detection_size: int
    detection_quick_limits: bool
    chorus_views: int
    chorus_image_size: int
    chorus_resolution: int


FULL = Sizes(repeats=3, hogsa_scene=(2, 3), hogsa_size=224, hogsa_samples=4, tiny_batch=8, tiny_steps=50,
             tiny_size=512, sd_batch=4, sd_steps=10, sd_latent=64, detection_batch=8, detection_size=512,
             detection_quick_limits=False, chorus_views=256, chorus_image_size=128, chorus_resolution=48)
QUICK = Sizes(repeats=3, hogsa_scene=(1, 1), hogsa_size=48, hogsa_samples=1, tiny_batch=2, tiny_steps=2,
              tiny_size=32, sd_batch=1, sd_steps=2, sd_latent=8, detection_batch=1, detection_size=96,
              detection_quick_limits=True, chorus_views=8, chorus_image_size=48, chorus_resolution=12)


class Skip(Exception):
    """A section that cannot run here: reported as {"skipped": reason}."""


# -- timing ------------------------------------------------------------------------------------------------------
def synchronizer(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def measure(fn: Callable[[], object], device: str, repeats: int, warmup: Callable[[], object] | None = None
            ) -> list[float]:
    """Seconds per call of `fn`, `repeats` times, after one warm-up call (of `warmup`, else `fn`)."""
    sync = synchronizer(device)
    (warmup or fn)()
    sync()
    seconds = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        fn()
        sync()
        seconds.append(time.perf_counter() - started)
    return seconds


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "repeats": len(values)}


def rates(count: float, seconds: list[float]) -> dict:
    """Items per second per repeat, summarized."""
    return spread([count / s for s in seconds])


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# -- 1. gsplat parity --------------------------------------------------------------------------------------------
def gsplat_parity(device: str, sizes: Sizes, state: dict, seconds_left: float) -> dict:
    if device != "cuda":
        raise Skip("the gsplat backend renders CUDA tensors only")
    if importlib.util.find_spec("gsplat") is None:
        state["gsplat"] = False
        raise Skip(GSPLAT_MISSING)
    timeout = max(30.0, min(240.0, seconds_left))
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-o", "addopts=", PARITY_TEST]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        # gsplat compiles its CUDA kernels on first use when its wheel has none: too long for this run.
        state["gsplat"] = False
        return {"error": f"{PARITY_TEST} did not finish in {timeout:.0f} s (gsplat compiling its CUDA kernels?)"}
    output = done.stdout + done.stderr
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", output)}
    outcome = ("failed" if counts.get("failed") or counts.get("error") or done.returncode not in (0, 5) else
               "passed" if counts.get("passed") else "skipped" if counts.get("skipped") else "not run")
    result = {"test": PARITY_TEST, "outcome": outcome, "passed": outcome == "passed",
              "pytest_seconds": time.perf_counter() - started, "pytest_exit_status": done.returncode}
    if outcome != "passed":
        result["pytest_output_tail"] = output[-3000:]
    try:
        result.update(parity_differences())
    except Exception as error:  # noqa: BLE001 - the pytest outcome above still stands
        traceback.print_exc()
        result["max_abs_diff_error"] = f"{type(error).__name__}: {error}"
    state["gsplat"] = outcome == "passed" or "max_abs_diff" in result
    return result


def parity_differences() -> dict:
    """The parity test's comparison (its scene, its camera), with the largest differences reported."""
    from models.gaussians.render import rasterize_gaussians
    from models.render.camera import intrinsics

    spec = importlib.util.spec_from_file_location("_gpu_check_test_gaussians", ROOT / "tests/hogsa/test_gaussians.py")
    test_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_module)
    means, quats, scales, opacities, sh, view = test_module.random_scene(400, seed=4, sh_coefficients=16,
                                                                        dtype=torch.float32)
    width, height = 96, 80
    K = torch.tensor(intrinsics(width, height), dtype=torch.float32)
    cuda = [x.cuda() for x in (means, quats, scales, opacities, sh, view, K)]
    background = torch.tensor([0.1, 0.2, 0.3]).cuda()
    ours = rasterize_gaussians(*cuda, width, height, background, backend="torch")
    theirs = rasterize_gaussians(*cuda, width, height, background, backend="gsplat")
    covered = theirs["alpha"] > 0.5
    return {"max_abs_diff": {"image": float((ours["image"] - theirs["image"]).abs().max()),
                             "alpha": float((ours["alpha"] - theirs["alpha"]).abs().max()),
                             "depth_where_alpha_gt_0.5": float((ours["depth"][covered] - theirs["depth"][covered])
                                                               .abs().max()) if covered.any() else None},
            "test_tolerance": {"image": 2e-3, "alpha": 2e-3, "depth": "1e-3 + 1e-3 x |depth|"},
            "scene": {"gaussians": len(means), "width": width, "height": height, "sh_coefficients": 16}}


# -- 2. HOGSA ----------------------------------------------------------------------------------------------------
def hogsa_ms_per_image(device: str, sizes: Sizes, state: dict, seconds_left: float) -> dict:
    from benchmarks.hogsa import PAPER_SECONDS_PER_IMAGE, augment_timings, model_row

    gsplat_installed = importlib.util.find_spec("gsplat") is not None
    if device == "cuda" and gsplat_installed and state.get("gsplat") is False:
        raise Skip("gsplat is installed but did not render in gsplat_parity: see that section")
    backend = "gsplat" if device == "cuda" and gsplat_installed else "torch"
    row, gaussians = model_row(*sizes.hogsa_scene)
    seconds = augment_timings(row, False, sizes.hogsa_samples, device, sizes.repeats, sizes.hogsa_size)
    result = {"backend": backend, "gaussians": gaussians, "image_size": sizes.hogsa_size,
              "pose_optimization": False, "images_per_repeat": sizes.hogsa_samples,
              "ms_per_image": spread([1000 * s for s in seconds]),
              "paper_ms_per_image": 1000 * PAPER_SECONDS_PER_IMAGE,
              "stages": "NovelPose (no POM), RenderNovelView (scene + object alone), CompositeAndAnnotate"}
    if device == "cuda" and not gsplat_installed:
        result["note"] = f"{GSPLAT_MISSING}: rendered with the torch rasterizer on CUDA"
    return result


# -- 3. text-to-image --------------------------------------------------------------------------------------------
def text_to_image(device: str, sizes: Sizes, state: dict, seconds_left: float) -> dict:
    """Two parts, each with its own figures or error."""
    result = {}
    for name, part in (("tiny", tiny_pipeline), ("sd15_unet", sd15_unet)):
        try:
            result[name] = part(device, sizes)
        except Skip as reason:
            result[name] = {"skipped": str(reason)}
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            result[name] = {"error": f"{type(error).__name__}: {error}"}
        free_memory(device)
    return result


def tiny_pipeline(device: str, sizes: Sizes) -> dict:
    from models.diffusion import Sampling, generate, load_diffusion

    pipeline = load_diffusion("tiny", "text-to-image", device)  # fp16 on CUDA, as the views stage loads it
    prompts = [f"a person holding a cup, view {i}" for i in range(sizes.tiny_batch)]
    seeds = list(range(sizes.tiny_batch))
    sampling = Sampling(steps=sizes.tiny_steps, guidance_scale=GUIDANCE, size=sizes.tiny_size)
    warmup = Sampling(steps=min(2, sizes.tiny_steps), guidance_scale=GUIDANCE, size=sizes.tiny_size)
    seconds = measure(lambda: generate(pipeline, prompts, seeds, sampling), device, sizes.repeats,
                      warmup=lambda: generate(pipeline, prompts, seeds, warmup))
    return {"pipeline": "tiny (models/diffusion.py: SD-shaped, random weights)", "dtype": str(pipeline.unet.dtype),
            "batch": sizes.tiny_batch, "steps": sizes.tiny_steps, "guidance_scale": GUIDANCE,
            "image_size": sizes.tiny_size, "images_per_second": rates(sizes.tiny_batch, seconds),
            "seconds_per_batch": spread(seconds),
            "timed": "the whole pipeline call (tokenizer, text encoder, UNet + scheduler steps, VAE decode, "
                     "uint8 conversion) through models.diffusion.generate"}


def sd15_unet(device: str, sizes: Sizes) -> dict:
    from hoi_factory.optional import require

    diffusers = require("diffusers", "diffusion", "diffusion models")
    quick = sizes.sd_latent < 64
    config = SD15_UNET_QUICK if quick else SD15_UNET
    dtype = torch.float16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # random weights made on the device: no 3.4 GB of fp32 on the host first
        unet = diffusers.UNet2DConditionModel(**config)
    unet = (unet.half() if dtype == torch.float16 else unet).eval()  # (diffusers warns on .to(dtype))
    scheduler = diffusers.DDIMScheduler(**SD_SCHEDULER)
    batch, latent = sizes.sd_batch, sizes.sd_latent
    generator = torch.Generator(device).manual_seed(0)
    latents = torch.randn(batch, 4, latent, latent, generator=generator, device=device, dtype=dtype)
    # [unconditional; conditional] text embeddings, as classifier-free guidance doubles the batch.
    text = torch.randn(2 * batch, 77, config["cross_attention_dim"], generator=generator, device=device, dtype=dtype)

    @torch.inference_mode()
    def denoise(steps: int) -> torch.Tensor:
        scheduler.set_timesteps(steps, device=device)
        x = latents
        for t in scheduler.timesteps:
            both = scheduler.scale_model_input(torch.cat([x, x]), t)
            noise = unet(both, t, encoder_hidden_states=text).sample
            unconditional, conditional = noise.chunk(2)
            x = scheduler.step(unconditional + GUIDANCE * (conditional - unconditional), t, x).prev_sample
        return x

    seconds = measure(lambda: denoise(sizes.sd_steps), device, sizes.repeats, warmup=lambda: denoise(2))
    per_step = [s / sizes.sd_steps for s in seconds]
    return {"unet": "SD-v1.5 UNet2DConditionModel config, random weights" if not quick else
                    "--quick: SD-v1.5 block layout, narrow (32/64/64/64 channels, 1 layer per block), random weights",
            "parameters": sum(p.numel() for p in unet.parameters()), "dtype": str(dtype),
            "batch": batch, "unet_batch_with_cfg": 2 * batch, "latent_size": latent, "image_size": 8 * latent,
            "text_embedding": [2 * batch, 77, config["cross_attention_dim"]], "scheduler": "DDIM",
            "steps_timed": sizes.sd_steps, "seconds_per_step": spread(per_step),
            f"images_per_second_at_{EXTRAPOLATED_STEPS}_steps": rates(batch / EXTRAPOLATED_STEPS, per_step),
            "extrapolated": f"yes: images/s = batch / ({EXTRAPOLATED_STEPS} x seconds per step), each step timed over "
                            f"{sizes.sd_steps} steps; UNet (CFG batch) + DDIM step only: no text encoder, no VAE "
                            "decode"}


# -- 4. detection ------------------------------------------------------------------------------------------------
def detection(device: str, sizes: Sizes, state: dict, seconds_left: float) -> dict:
    from models.perception import RCNNPerception

    mask_model, keypoint_model = RCNNPerception.architectures(min_size=sizes.detection_size)  # random weights
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, sizes.detection_size, sizes.detection_size, generator=generator).to(device)
              for _ in range(sizes.detection_batch)]
    result = {"weights": "random (weights=None, weights_backbone=None)", "dtype": "torch.float32",
              "image_size": sizes.detection_size, "batch": sizes.detection_batch,
              "note": "random weights score nearly every box above the 0.05 threshold: the mask and keypoint heads "
                      "run on detections_per_img boxes per image, their full load (trained weights give fewer)"}
    if sizes.detection_quick_limits:
        result["quick_limits"] = {"rpn_pre_nms_top_n": 50, "rpn_post_nms_top_n": 10, "detections_per_img": 2}
    for name, model in (("mask_rcnn", mask_model), ("keypoint_rcnn", keypoint_model)):
        if sizes.detection_quick_limits:  # a smoke run: a handful of boxes instead of 1000 proposals, 100 detections
            model.rpn._pre_nms_top_n = {"training": 50, "testing": 50}
            model.rpn._post_nms_top_n = {"training": 10, "testing": 10}
            model.roi_heads.detections_per_img = 2
        model = model.eval().to(device)
        outputs = []

        @torch.inference_mode()
        def run() -> None:
            outputs[:] = model(images)

        seconds = measure(run, device, sizes.repeats)
        result[name] = {"images_per_second": rates(len(images), seconds), "seconds_per_batch": spread(seconds),
                        "detections_per_image": statistics.mean(len(o["boxes"]) for o in outputs),
                        "score_threshold": model.roi_heads.score_thresh,
                        "detections_per_img": model.roi_heads.detections_per_img}
        model.to("cpu")
        free_memory(device)
    return result


# -- 5. CHORUS aggregation ---------------------------------------------------------------------------------------
def chorus_aggregation(device: str, sizes: Sizes, state: dict, seconds_left: float) -> dict:
    from benchmarks.chorus_aggregation import stand_in_views, weights_for
    from models.chorus.aggregate import Views, aggregate
    from models.chorus.canonical import Grid

    views = stand_in_views(sizes.chorus_views, sizes.chorus_image_size)  # rendered on the CPU
    grid = Grid(sizes.chorus_resolution)
    cpu_points, cpu_weights = grid.centres(), weights_for(grid)
    points, weights = cpu_points.to(device), cpu_weights.to(device)
    on_device = Views([torch.as_tensor(m, device=device) for m in views.masks], views.K.to(device),
                      views.R.to(device), views.t.to(device), views.bones.to(device), views.azimuths.to(device))
    count = len(views.masks)
    resident = measure(lambda: aggregate(points, weights, on_device), device, sizes.repeats)
    from_host = measure(lambda: aggregate(points, weights, views), device, sizes.repeats)
    subset = min(16, count)
    head = Views(views.masks[:subset], views.K[:subset], views.R[:subset], views.t[:subset], views.bones[:subset],
                 views.azimuths[:subset])
    here = aggregate(points, weights, head).cpu()
    reference = aggregate(cpu_points, cpu_weights, head)
    difference = (here - reference).abs()
    return {"grid": sizes.chorus_resolution, "voxels": len(cpu_points), "views": count,
            "image_size": sizes.chorus_image_size,
            "views_per_second": rates(count, resident),
            "views_per_second_numpy_masks": rates(count, from_host),
            "seconds_per_call": spread(resident),
            "vs_cpu": {"views": subset, "max_abs_diff": float(difference.max()),
                       "voxels_differing_over_1e-4": int((difference > 1e-4).sum())},
            "inputs": "benchmarks.chorus_aggregation.stand_in_views (procedural backpack views); views_per_second "
                      "with masks already on the device, views_per_second_numpy_masks copying each mask per call"}


CHECKS = {"gsplat_parity": gsplat_parity, "hogsa_ms_per_image": hogsa_ms_per_image, "text_to_image": text_to_image,
          "detection": detection, "chorus_aggregation": chorus_aggregation}


# -- the run -----------------------------------------------------------------------------------------------------
def versions() -> dict:
    found = {}
    for package in ("torch", "torchvision", "diffusers", "transformers", "gsplat"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def finite(value):
    """JSON without NaN or infinities (json.dumps would write them as bare, invalid tokens)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def run_checks(device: str, quick: bool, budget: float) -> dict:
    started = time.perf_counter()
    sizes = QUICK if quick else FULL
    cuda = torch.cuda.is_available()
    if device == "cpu" and quick:
        # Tiny tensors: one intra-op thread is as fast, and on a busy machine OpenMP threads waiting for each
        # other at every small op are many times slower.
        torch.set_num_threads(1)
    name = (torch.cuda.get_device_name() if cuda else "no CUDA device") if device == "cuda" else cpu_name()
    result = {"device": name,
              "device_type": device, "cuda_available": cuda, "cuda_version": torch.version.cuda,
              "quick": quick, "versions": versions(), "python": platform.python_version(),
              "platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "budget_seconds": budget, "sizes": asdict(sizes)}
    if device == "cuda" and not cuda:
        result.update({name: {"skipped": "no CUDA device"} for name in SECTIONS})
    else:
        if device == "cuda":
            result["device_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        state: dict = {}
        for name in SECTIONS:
            elapsed = time.perf_counter() - started
            if elapsed > budget:
                result[name] = {"skipped": f"time budget of {budget:.0f} s used up ({elapsed:.0f} s elapsed)"}
                continue
            print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
            section_started = time.perf_counter()
            try:
                result[name] = CHECKS[name](device, sizes, state, budget - elapsed)
            except Skip as reason:
                result[name] = {"skipped": str(reason)}
            except Exception as error:  # noqa: BLE001 - reported in its section; the others still run
                traceback.print_exc()
                result[name] = {"error": f"{type(error).__name__}: {error}"}
            if isinstance(result[name], dict) and "skipped" not in result[name]:
                result[name]["section_seconds"] = time.perf_counter() - section_started
            print(f"[gpu_check] {name}: {time.perf_counter() - section_started:.1f} s", file=sys.stderr, flush=True)
            free_memory(device)
    if device == "cuda" and cuda:
        result["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["total_seconds"] = time.perf_counter() - started
    return finite(result)


def errors_in(result: dict) -> list[str]:
    """Sections (or parts, section.part) holding an error, and a failed parity test."""
    found = []
    for name in SECTIONS:
        section = result.get(name, {})
        if "error" in section:
            found.append(name)
        found += [f"{name}.{part}" for part, value in section.items() if isinstance(value, dict) and "error" in value]
    if result.get("gsplat_parity", {}).get("outcome") == "failed":
        found.append("gsplat_parity (test failed)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (about a minute on a CPU)")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds; sections not started by then are skipped (default 420: done in < 8 min)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    args = parser.parse_args(argv)

    # Only the JSON goes to stdout: while the checks run, file descriptor 1 (Python's prints, and those of
    # libraries and C extensions) points at stderr.
    sys.stdout.flush()
    saved_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        result = run_checks(args.device, args.quick, args.budget)
        result["errors"] = errors_in(result)
    finally:
        sys.stdout.flush()
        os.dup2(saved_stdout, 1)
        os.close(saved_stdout)
    text = json.dumps(result, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text, flush=True)
    print(f"written: {args.out}", file=sys.stderr)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
