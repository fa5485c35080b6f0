"""The `hogsa-models` pipeline: hand-object sequences -> one fitted HOGS model per sequence (HOGSA section 3.2).

A work item is a sequence (ARCTIC, H2O, or a procedural STAND-IN); the worker reads it, fits left hand, right hand
and object Gaussians on the training cameras' images, and scores novel views on the held-out cameras (PSNR, SSIM).
As in the paper only hands and object are fitted (`masked`, the default): each view's foreground is the dataset's
masks where it has them (the stand-ins), else the visible pixels of the ground-truth hand (MANO) and object meshes
z-buffered together; outside it the target is the render's black background (models/hogsa/fit.py), and the scores
compare with that target. Deviation: whatever the meshes do not model (forearms, a body in front of the object)
still counts as foreground where it covers their silhouettes.
On the stand-ins, whose exact object-only view is known, `object_only_error` checks the object rendered alone
where the hands hide it (HO3Pairs' truth; a stained model shows the hands' colour there), and
`max_object_only_error` rejects models above it; the row keeps the object's true vertex colours
(`object_colours`), with which the `hogsa` pipeline scores every sample's object-only render the same way.
The hands' Gaussians sit on `hand_mesh`: "mano-hd" (default) or "mano" (778 vertices). Deviation: the paper uses
HandAvatar's MANO-HD (3,093 vertices, a smoothed template, learned skinning weights that are not published); ours is
MANO subdivided once with interpolated blend shapes and skinning weights, on MANO's own surface
(models/hand/mano_hd.py).
A row carries everything the augmentation pipeline (`hogsa`) needs: the model blob, the sequence's poses and
cameras as JSON, the hand model it was posed with, and a truth | render preview of a held-out view; and, for the
SRM (tasks/training/srm.py), (HOGS render, ground-truth image) pairs of up to `srm_pairs` training views
(`train_renders`, `train_images`: PNGs, both cropped to the same square around the view's foreground).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field

from hoi_factory.codec import encode_png
from hoi_factory.columns import column
from hoi_factory.config import ExecutionConfig, RunConfig, Variant
from hoi_factory.context import StageContext
from hoi_factory.pipeline import Pipeline, PlanError
from hoi_factory.stage import MapStage, Reject, Resources, Row
from models.gaussians.ssim import psnr, ssim
from models.hand import MANO_HD, load_hands
from models.hogsa.fit import View, fit_hogs
from models.hogsa.hogs import HANDS, HOGS
from models.hogsa.super_resolution import PAIR_COLUMNS
from tasks.hogsa.arctic import read_arctic
from tasks.hogsa.h2o import read_h2o
from tasks.hogsa.posing import camera_of, camera_to_json, frame_to_json, hand_output, scene_pose, sequence_betas
from tasks.hogsa.sequence import Frame, FrameReject, Sequence, StorageOptions, posed_object_vertices, visible_masks
from tasks.hogsa.standin_sequences import mesh_colours

QUALITY_COLUMNS = ("psnr_train", "psnr_heldout", "ssim_heldout")
MODEL_COLUMNS = ("object_name", "hogs", "frames", "cameras", "hand_model", "hand_mesh", "flat_hand_mean",
                 "num_gaussians", "train_views", "held_out_views", "skipped_frames", *QUALITY_COLUMNS,
                 "object_only_error", "object_colours", "preview", *PAIR_COLUMNS)
PAIR_MARGIN = 1.2  # a pair's square crop: the foreground's longer bounding-box side times this


class ProceduralSequences(Variant):
    """STAND-IN bimanual grasps rendered exactly from a ring of cameras (tasks/hogsa/standin_sequences.py)."""

    kind: Literal["procedural"] = "procedural"
    size: int = Field(96, ge=32, le=1024, description="image side, pixels")
    cameras: int = Field(8, ge=2, le=64, description="cameras on a ring")
    frames: int = Field(3, ge=1, le=100, description="frames per sequence")


class RecordedSequences(Variant):
    """What the ARCTIC and H2O readers share."""

    inputs: str = Field(..., description="the dataset root")
    cameras: list[str] | None = Field(None, description="camera names to use (default: all)")
    frames: list[int] | None = Field(None, description="frame indices to use (default: all)")
    image_scale: int = Field(1, ge=1, le=16, description="shrink images and intrinsics by this factor")


class ArcticSequences(RecordedSequences):
    """ARCTIC's released layout (`inputs`: arctic_data/data)."""

    kind: Literal["arctic"] = "arctic"


class H2OSequences(RecordedSequences):
    """H2O's subject/scene/take/cam<k>/ layout."""

    kind: Literal["h2o"] = "h2o"
    objects: str | None = Field(None, description="the object meshes root (default: inputs/object)")


class HOGSModelsConfig(RunConfig):
    source: ProceduralSequences | ArcticSequences | H2OSequences = Field(
        default_factory=ProceduralSequences, discriminator="kind", description="sequence layout")
    sequences: list[str] = Field(..., min_length=1, description="arctic 's01/box_grab_01', h2o 'subject1/h1/0'; "
                                 "procedural: stand-in objects (box, bottle, ball, mug)")
    held_out_cameras: int = Field(1, ge=0, description="the last N cameras score novel views, unseen in training")
    hand_model: str = Field("standin", description="'standin' or a folder with MANO_LEFT.npz / MANO_RIGHT.npz")
    hand_mesh: Literal["mano-hd", "mano"] = Field(MANO_HD, description="the mesh the hand Gaussians sit on: "
                                                  "'mano-hd' (MANO subdivided once, 3093 vertices) or 'mano' (778)")
    iterations: int = Field(3000, ge=1, le=1_000_000, description="fitting steps (the paper: 50k)")
    gaussians_per_face: int = Field(2, ge=1, le=7, description="the paper's k")
    sh_degree: int = Field(1, ge=0, le=3)
    masked: bool = Field(True, description="fit hands and object only (their masks); false fits the whole photo")
    max_object_only_error: float | None = Field(None, gt=0, le=1, description="stand-ins: reject a model whose "
                                                "object-only render errs more (mean |colour|, 0-1) where hands hide it")
    srm_pairs: int = Field(16, ge=0, le=10_000, description="training views written as (render, image) pairs "
                           "for the SRM, evenly spread over the training views")
    gpus: float = Field(0.0, ge=0, le=8, description="GPUs per fitting worker")


def read_sequence(source: ProceduralSequences | ArcticSequences | H2OSequences, name: str, seed: int,
                  rejects: list[FrameReject], storage_options: StorageOptions | None = None) -> Sequence:
    """The named sequence from `source`, its files opened with `storage_options` (PlanError when it cannot be
    read)."""
    if isinstance(source, ProceduralSequences):
        from tasks.hogsa.standin_sequences import procedural_sequence

        return procedural_sequence(seed, name, frames=source.frames, cameras=source.cameras, width=source.size,
                                   height=source.size)
    subject, _, sequence = name.partition("/")
    if not subject or not sequence:
        raise PlanError(f"sequence {name!r}: expected '<subject>/<sequence>'")
    if isinstance(source, ArcticSequences):
        return read_arctic(source.inputs, subject, sequence, source.cameras, source.frames,
                           image_scale=source.image_scale, rejects=rejects, storage_options=storage_options)
    return read_h2o(source.inputs, subject, sequence, source.cameras, source.frames, objects_root=source.objects,
                    image_scale=source.image_scale, rejects=rejects, storage_options=storage_options)


def flat_hand_mean(source: str) -> bool:
    """H2O labels MANO with an absolute finger pose; ARCTIC and the stand-ins pose relative to the mean hand."""
    return source == "h2o"


class FitHOGS(MapStage):
    batch_size = 1
    needs = frozenset({"sequence"})
    makes = frozenset(MODEL_COLUMNS)

    def __init__(self, config: HOGSModelsConfig):
        self.config = config
        self.resources = Resources(num_cpus=1, num_gpus=config.gpus)

    def setup(self, context: StageContext) -> None:
        self.hands = load_hands(self.config.hand_model, flat_hand_mean(self.config.source.kind), self.config.hand_mesh)
        self.device = context.device
        self.storage_options = context.storage_options

    def build(self, sequence: Sequence) -> HOGS:
        rest = {side: self.hands[side].shaped_template(torch.as_tensor(sequence_betas(sequence.frames, side),
                                                                       dtype=torch.float32)[None])[0]
                for side in HANDS}
        axis = None if sequence.articulation_axis is None else torch.as_tensor(np.stack(sequence.articulation_axis))
        part = None if sequence.object_part is None else torch.as_tensor(sequence.object_part)
        return HOGS(rest, {s: torch.as_tensor(self.hands[s].faces) for s in HANDS},
                    {s: self.hands[s].lbs_weights for s in HANDS},
                    torch.as_tensor(np.asarray(sequence.object_mesh.vertices), dtype=torch.float32),
                    torch.as_tensor(np.asarray(sequence.object_mesh.faces)), part, axis,
                    self.config.gaussians_per_face, self.config.sh_degree)

    def process_row(self, row: Row) -> Row | Reject:
        config, frame_rejects = self.config, []
        try:
            sequence = read_sequence(config.source, row["sequence"], row["seed"] % 2**31, frame_rejects,
                                     self.storage_options)
        except PlanError as exc:
            return Reject.of(row, "unreadable sequence", str(exc))
        return self.fit(row, sequence, len(frame_rejects))

    def fit(self, row: Row, sequence: Sequence, skipped_frames: int = 0) -> Row | Reject:
        """The row of a sequence already read: the fitted model, its scores and SRM pairs."""
        config = self.config
        names = [c.name for c in sequence.cameras]
        held_out = set(names[len(names) - config.held_out_cameras:]) if config.held_out_cameras else set()
        if len(held_out) >= len(names):
            return Reject.of(row, "too few cameras", f"{len(names)} cameras, {len(held_out)} held out")
        views = {"train": [], "held_out": []}
        for frame in sequence.frames:
            pose = scene_pose(self.hands, frame)
            masks = self.visible(sequence, frame) if config.masked else {}
            for camera in sequence.cameras:
                if camera.name in frame.images:
                    image = torch.tensor(frame.images[camera.name], dtype=torch.float32, device=self.device) / 255
                    labels = {k: torch.as_tensor(v, device=self.device) for k, v in masks.get(camera.name, {}).items()}
                    foreground = torch.stack(list(labels.values())).any(0) if labels else None
                    views["held_out" if camera.name in held_out else "train"].append(
                        View(image, camera_of(camera), pose, foreground, labels.get("object")))
        if not views["train"]:
            return Reject.of(row, "no training images", f"{skipped_frames} frames skipped")
        model = self.build(sequence).to(self.device)
        losses = fit_hogs(model, views["train"], config.iterations, seed=row["seed"])
        if not np.isfinite(losses).all():  # e.g. a degenerate pose or mesh: the model is not usable
            return Reject.of(row, "fit diverged", f"non-finite loss from step {int(np.argmin(np.isfinite(losses)))}")
        stain = self.object_only_error(model, sequence, set(names) - held_out)
        if None not in (stain, config.max_object_only_error) and stain > config.max_object_only_error:
            return Reject.of(row, "stained object", f"object-only colour error {stain:.3f} where the hands hide it "
                             f"> max_object_only_error {config.max_object_only_error}")
        procedural = isinstance(config.source, ProceduralSequences)
        return {**row, **self.score(model, views), **self.pairs(model, views["train"]), "hogs": model.to_bytes(),
                "object_only_error": stain, "object_name": sequence.object_name,
                "object_colours": mesh_colours(sequence.object_mesh).astype(np.uint8) if procedural else None,
                "frames": json.dumps([frame_to_json(f) for f in sequence.frames]),
                "cameras": json.dumps([camera_to_json(c) for c in sequence.cameras]),
                "hand_model": config.hand_model, "hand_mesh": config.hand_mesh,
                "flat_hand_mean": flat_hand_mean(config.source.kind),
                "num_gaussians": sum(m.num_gaussians for m in model.actors.values()),
                "train_views": len(views["train"]), "held_out_views": len(views["held_out"]),
                "skipped_frames": skipped_frames}

    def visible(self, sequence: Sequence, frame: Frame) -> dict[str, dict[str, np.ndarray]]:
        """camera name -> label ("left", "right", "object") -> (H, W) bool: what each shows in that view, the
        dataset's masks when it has them, else the ground-truth meshes z-buffered together."""
        if frame.masks:
            return frame.masks
        with torch.no_grad():
            meshes = {side: (hand_output(self.hands[side], pose).vertices[0].double().cpu().numpy(),
                             np.asarray(self.hands[side].faces)) for side, pose in frame.hands.items()}
        meshes["object"] = (posed_object_vertices(sequence, frame), np.asarray(sequence.object_mesh.faces))
        return {camera.name: visible_masks(camera, meshes) for camera in sequence.cameras
                if camera.name in frame.images}

    @torch.no_grad()
    def object_only_error(self, model: HOGS, sequence: Sequence, cameras: set[str]) -> float | None:
        """Stand-ins: the mean absolute colour error (0-1) of the object rendered alone against its exact render,
        over the object pixels the hands hide in the `cameras`' views (None off the stand-ins or where they hide
        nothing)."""
        if not isinstance(self.config.source, ProceduralSequences):
            return None
        from tasks.hogsa.standin_sequences import render_hands_and_object

        errors = []
        for frame in sequence.frames:
            pose = scene_pose(self.hands, frame)
            for camera in sequence.cameras:
                if camera.name not in cameras or camera.name not in frame.masks:
                    continue
                exact = render_hands_and_object(camera, posed_object_vertices(sequence, frame), sequence.object_mesh,
                                                {})
                hidden = exact.masks["object"] & ~frame.masks[camera.name]["object"]
                if hidden.any():
                    render = model.render(camera_of(camera), pose, actors=("object",))["image"].clamp(0, 1)
                    errors.append(np.abs(render.cpu().numpy() - exact.image / 255)[hidden])
        return float(np.concatenate(errors).mean()) if errors else None

    @torch.no_grad()
    def pairs(self, model: HOGS, views: list[View]) -> dict[str, list[bytes]]:
        """(HOGS render, target) PNG pairs of `srm_pairs` training views evenly spread, cropped alike."""
        count = min(self.config.srm_pairs, len(views))
        chosen = [views[int(i)] for i in np.linspace(0, len(views) - 1, count).round()] if count else []
        renders, images = [], []
        for view in chosen:
            render = model.render(view.camera, view.pose)["image"].clamp(0, 1)
            top, left, side = foreground_square(view.mask)
            for image, out in ((render, renders), (view.target, images)):
                crop = image[top:top + side, left:left + side] if side else image
                out.append(encode_png((crop * 255).round().byte().cpu().numpy()))
        return dict(zip(PAIR_COLUMNS, (renders, images)))

    @torch.no_grad()
    def score(self, model: HOGS, views: dict[str, list[View]]) -> dict:
        scores = {}
        for split, key in (("train", "psnr_train"), ("held_out", "psnr_heldout")):
            renders = [(model.render(v.camera, v.pose)["image"].clamp(0, 1), v.target) for v in views[split]]
            scores[key] = float(np.mean([psnr(r, t) for r, t in renders])) if renders else None
            if split == "held_out":
                scores["ssim_heldout"] = float(np.mean([float(ssim(r, t)) for r, t in renders])
                                               ) if renders else None
        shown = (views["held_out"] or views["train"])[0]
        render = model.render(shown.camera, shown.pose)["image"].clamp(0, 1)
        scores["preview"] = encode_png((torch.cat([shown.target, render], 1) * 255).round().byte().cpu().numpy())
        return scores


def foreground_square(mask: torch.Tensor | None) -> tuple[int, int, int]:
    """(top, left, side) of a square inside the image centred on the mask's bounding box, PAIR_MARGIN times its
    longer side (at most the image's shorter side); side 0 (the whole image) without a mask or foreground."""
    if mask is None or not bool(mask.any()):
        return 0, 0, 0
    height, width = mask.shape
    rows, cols = torch.nonzero(mask.cpu(), as_tuple=True)
    top, bottom, left, right = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    side = min(height, width, int(np.ceil(PAIR_MARGIN * max(bottom - top, right - left))))
    centre_y, centre_x = (top + bottom) // 2, (left + right) // 2
    top = int(np.clip(centre_y - side // 2, 0, height - side))
    left = int(np.clip(centre_x - side // 2, 0, width - side))
    return top, left, side


SCHEMA = pa.schema([
    column("sequence", pa.string(), "the sequence: arctic 's01/box_grab_01', h2o 'subject1/h1/0', or a stand-in "
           "object's name"),
    column("object_name", pa.string(), "the object's name (class)"),
    column("hogs", pa.binary(), "the fitted HOGS model (models/hogsa/hogs.py: HOGS.from_bytes)",
           encoding="safetensors"),
    column("frames", pa.string(), "the sequence's frames: MANO parameters per hand (world frame, metres), object "
           "pose and articulation (tasks/hogsa/posing.py: frame_from_json)", encoding="json"),
    column("cameras", pa.string(), "the sequence's cameras: name, K, R, t (world -> camera, OpenCV), size "
           "(tasks/hogsa/posing.py: camera_to_json)", encoding="json"),
    column("hand_model", pa.string(), "the MANO files the hands were posed with: 'standin' or a folder"),
    column("hand_mesh", pa.string(), "the mesh the hand Gaussians sit on: 'mano-hd' or 'mano'"),
    column("flat_hand_mean", pa.bool_(), "whether hand_pose is absolute (H2O) rather than relative to hands_mean"),
    column("num_gaussians", pa.int64(), "Gaussians of hands and object together"),
    column("train_views", pa.int32(), "images the model was fitted on"),
    column("held_out_views", pa.int32(), "images of the held-out cameras"),
    column("skipped_frames", pa.int32(), "frames the reader skipped (unreadable or without labels)"),
    column("psnr_train", pa.float32(), "mean PSNR of the training views (inside the hand and object masks when "
           "masked)", unit="dB"),
    column("psnr_heldout", pa.float32(), "mean PSNR of the held-out views (null without held-out cameras)",
           unit="dB"),
    column("ssim_heldout", pa.float32(), "mean SSIM of the held-out views (null without held-out cameras)"),
    column("object_only_error", pa.float32(), "stand-ins: mean absolute colour error (0-1) of the object rendered "
           "alone where the hands hide it, against its exact render (null for real captures)"),
    column("object_colours", pa.uint8(), "stand-ins: the object mesh's true vertex colours, in the HOGS object's "
           "vertex order (null for real captures)", shape=(None, 3), unit="sRGB 0-255"),
    column("preview", pa.binary(), "a held-out view (a training view without held-out cameras): truth | render",
           encoding="png"),
    column(PAIR_COLUMNS[0], pa.binary(), "SRM pairs: HOGS renders of up to srm_pairs training views, each cropped "
           "to a square around the view's foreground", shape=(None,), encoding="png"),
    column(PAIR_COLUMNS[1], pa.binary(), f"SRM pairs: the images of {PAIR_COLUMNS[0]}'s views, cropped alike",
           shape=(None,), encoding="png"),
])


class HOGSModelsPipeline(Pipeline[HOGSModelsConfig]):
    name = "hogsa-models"
    description = "HOGSA: hand-object sequences -> one fitted hand-object Gaussian splatting model per sequence"
    config_class = HOGSModelsConfig
    schema = SCHEMA
    item_keys = frozenset({"input_id", "sequence"})
    preview_column = "preview"

    def plan(self, config: HOGSModelsConfig, context: StageContext) -> list[dict]:
        from tasks.procedural.hand_object import OBJECTS

        source = config.source
        unknown = set(config.sequences) - set(OBJECTS) if isinstance(source, ProceduralSequences) else set()
        if unknown:
            raise PlanError(f"procedural sequences are named by their stand-in object ({', '.join(OBJECTS)}), "
                            f"not {', '.join(sorted(unknown))}")
        if isinstance(source, RecordedSequences) and not Path(source.inputs).exists() and "://" not in source.inputs:
            raise PlanError(f"inputs {source.inputs!r} does not exist")
        if len(set(config.sequences)) != len(config.sequences):
            raise PlanError("sequences: a sequence is named twice")
        return [{"input_id": name, "sequence": name} for name in config.sequences]

    def stages(self, config: HOGSModelsConfig):
        return [FitHOGS(config)]

    def demo_config(self, inputs: Path, execution: ExecutionConfig) -> HOGSModelsConfig:
        return HOGSModelsConfig(source=ProceduralSequences(size=64, cameras=6, frames=2), sequences=["box"],
                                iterations=150, gaussians_per_face=1, sh_degree=0, execution=execution,
                                output={"dataset": "demo-hogsa-models"})

    def dataset_metrics(self, version) -> dict[str, float]:
        return version.column_means(list(QUALITY_COLUMNS))
