"""The CHORUS occupancy pipeline: calibrated views -> one canonical occupancy grid per semantic cluster
(category; prompt; prompt + body part), its isosurface mesh, a render, and PAP on held-out views.

A work item is a cluster: the ids of its views travel in the item and the worker reads their masks,
poses and cameras from the views dataset itself.

Part relevance (a prompt + part cluster keeps a view only if the part takes part in it) follows the official
semantic clustering: the part's interaction region is the set of canonical voxels within epsilon = 0.13 m of
the part's star-posed vertices, and a view is kept when the aggregation's own projection of some region voxel
(posed by the view's bones) lands in the object mask, i.e. some ray through the mask passes that close to the
part. Parts are the vertices whose dominant skinning joint belongs to the part (the official reads a
mesh segmentation file). In the no-canonicalization ablation the region still follows the view's pose.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field
from scipy.spatial import cKDTree

from hoi_factory.codec import decode_mask, encode_npy, encode_png
from hoi_factory.columns import column
from hoi_factory.config import ExecutionConfig, RunConfig
from hoi_factory.context import StageContext
from hoi_factory.datasets import DatasetStore
from hoi_factory.pipeline import Pipeline
from hoi_factory.report import table_picture
from hoi_factory.stage import MapStage, Reject, Row
from models.body.smpl import load_body_model, star_pose
from models.chorus import pap
from models.chorus.aggregate import Views, aggregate, views_hit
from models.chorus.canonical import Grid, backward_warp, canonical_weights
from tasks.chorus import lexicon
from tasks.chorus.scenes import canonical_object_voxels, interaction_pose

BODY_PARTS = {"hands": (20, 21, 22, 23), "feet": (7, 8, 10, 11), "head": (12, 15), "torso": (0, 3, 6, 9, 13, 14)}
VIEW_COLUMNS = ["sample_id", "object_mask", "body_pose", "K", "R", "t", "azimuth", "width", "height",
                "verb"]
CLUSTER_KINDS = ("category", "prompt", "prompt+part")
PAP_NAMES = {"pap": "projective average precision (CHORUS Sec. 4.2)", "pap_strict": "strict PAP",
             "pap_occlusion_aware": "occlusion-aware PAP", "pap_strict_occlusion_aware": "strict occlusion-aware PAP"}
INTERACTION_DISTANCE = 0.13  # epsilon of the official semantic clustering, metres in canonical space


class OccupancyConfig(RunConfig):
    views: str = Field("chorus-views", description="calibrated views dataset: name or name/version")
    test_views: str | None = Field(None, description="held-out views (same format) for PAP; none: no PAP")
    clusters: list[Literal["category", "prompt", "prompt+part"]] = Field(["category", "prompt"])
    body_parts: list[Literal["hands", "feet", "head", "torso"]] = Field(list(BODY_PARTS))
    min_views: int = Field(8, ge=1, description="clusters with fewer views are rejected")
    resolution: int = Field(48, ge=8, le=256)
    extent: float = Field(1.5, gt=0, description="the grid spans [-extent, extent]^3 metres")
    canonicalize: bool = Field(True, description="warp through the canonical pose (False: the paper's ablation)")
    body_model: str = "standin"
    iou_threshold: float = Field(0.5, gt=0, lt=1, description="occupancy level for meshes and truth IoU")


def _cluster_name(prompt: str | None, part: str | None) -> str:
    return "all" if prompt is None else prompt if part is None else f"{prompt} @ {part}"


class ViewReader:
    """Reads view rows by (shard, row) from a views dataset, one shard at a time."""

    def __init__(self, datasets: DatasetStore, ref: str):
        self.version = datasets.open_ref(ref)
        self._shards: dict[int, list[Row]] = {}

    def rows(self, refs: list[list[int]]) -> list[Row]:
        for shard in {s for s, _ in refs} - set(self._shards):
            self._shards[shard] = self.version.read_shard(shard, VIEW_COLUMNS).to_pylist()
        return [self._shards[s][r] for s, r in refs]


class AggregateCluster(MapStage):
    """One cluster's views -> its canonical occupancy grid, mesh, render and scores."""

    batch_size = 1
    needs = frozenset({"category", "body_part", "parent", "view_refs", "test_parent", "test_refs"})
    makes = frozenset({"num_views", "occupancy", "mesh_ply", "preview", "truth_iou", *pap.VARIANTS,
                       "num_test_views", "num_test_views_occlusion_aware"})

    def __init__(self, config: OccupancyConfig):
        self.config = config

    def setup(self, context: StageContext) -> None:
        self.datasets = context.datasets
        self.body = load_body_model(self.config.body_model)
        self.grid = Grid(self.config.resolution, self.config.extent)
        self.centres = self.grid.centres()
        self.star = self.body.pose(star_pose())
        self.weights = canonical_weights(self.grid, self.star.vertices[0].numpy(), self.body.lbs_weights.numpy())
        owner = self.body.lbs_weights.argmax(1).numpy()
        self.regions = {}  # part -> the canonical points and skinning weights of its interaction region
        for part in self.config.body_parts:
            part_vertices = self.star.vertices[0].numpy()[np.isin(owner, BODY_PARTS[part])]
            region = interaction_region(self.centres.numpy(), part_vertices)
            self.regions[part] = (self.centres[region], self.weights[region])
        self.readers: dict[str, ViewReader] = {}
        self.test_views: dict[str, dict] = {}  # test view id -> what it needs to score any cluster

    def _read(self, ref: str, refs: list[list[int]]) -> list[Row]:
        if ref not in self.readers:
            self.readers[ref] = ViewReader(self.datasets, ref)
        return self.readers[ref].rows(refs)

    def _bones(self, poses: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Bones from canonical (star) to each pose, and the posed vertices."""
        posed = self.body.pose(torch.from_numpy(poses).float())
        return posed.transforms @ torch.linalg.inv(self.star.transforms), posed.vertices

    def process_row(self, row: Row) -> Row | Reject:
        views = self._read(row["parent"], row["view_refs"])
        bones, _ = self._bones(np.array([v["body_pose"] for v in views]).reshape(len(views), -1))  # (23, 3) or flat
        batch = Views(
            masks=[decode_mask(v["object_mask"]) for v in views],
            K=torch.tensor([v["K"] for v in views]).reshape(-1, 3, 3),
            R=torch.tensor([v["R"] for v in views]).reshape(-1, 3, 3),
            t=torch.tensor([v["t"] for v in views]), bones=bones, azimuths=torch.tensor([v["azimuth"] for v in views]),
        )
        if row["body_part"]:
            keep = [k for k, hit in enumerate(rays_reach(*self.regions[row["body_part"]], batch)) if hit]
            views, batch = [views[k] for k in keep], select_views(batch, keep)
        if len(views) < self.config.min_views:
            return Reject.of(row, "too few views", f"{len(views)} < {self.config.min_views}")
        if not self.config.canonicalize:
            batch.bones = torch.eye(4).expand_as(batch.bones).clone()
        occupancy = aggregate(self.centres, self.weights, batch).reshape((self.config.resolution,) * 3)
        scores = self._evaluate(occupancy, row)
        return {**row, "num_views": len(views), "occupancy": encode_npy(occupancy.numpy().astype(np.float16)),
                "mesh_ply": self._mesh(occupancy), "preview": self._preview(occupancy),
                "truth_iou": self._truth_iou(occupancy, {v["verb"] for v in views}, row["category"]), **scores}

    def _evaluate(self, occupancy: torch.Tensor, row: Row) -> dict[str, float]:
        """The four PAP variants over the test views whose target is not empty (NaN and 0 views: not measured)."""
        tests = self._read(row["test_parent"], row["test_refs"]) if row["test_refs"] else []
        means = pap.mean_pap([self._test_ap(occupancy, view) for view in tests])
        return {**{name: means[name] for name in pap.VARIANTS}, "num_test_views": means["num_images"],
                "num_test_views_occlusion_aware": means["num_images_occlusion_aware"]}

    def _prepared(self, view: Row) -> dict:
        """What a test view contributes whatever the cluster, computed once per view: its grid points warped to
        canonical space, the eval-size camera, the posed body's region and the downsampled object mask."""
        if view["sample_id"] not in self.test_views:
            bones, vertices = self._bones(np.reshape(view["body_pose"], (1, -1)))
            points = (backward_warp(self.centres, vertices[0].numpy(), self.body.lbs_weights.numpy(), bones[0])
                      if self.config.canonicalize else self.centres)
            width, height, scale = pap.eval_size(view["width"], view["height"])
            K, R, t = np.reshape(view["K"], (3, 3)).copy(), np.reshape(view["R"], (3, 3)), np.array(view["t"])
            K[:2] *= scale
            self.test_views[view["sample_id"]] = {
                "points": points, "camera": (K, R, t, width, height),
                "human": pap.project_region(vertices[0].numpy(), K, R, t, width, height),
                "target": _downsample(decode_mask(view["object_mask"]), width, height)}
        return self.test_views[view["sample_id"]]

    def _test_ap(self, occupancy: torch.Tensor, view: Row) -> pap.ImageAP:
        """One test view as the official evaluation: the posed field and the posed body's vertices projected at
        short side 32 px (K scaled by the same factor on both axes), the object mask area-downsampled."""
        prepared = self._prepared(view)
        values = self.grid.sample(occupancy, prepared["points"]).numpy()
        scores = pap.project_max(self.centres.numpy(), values, *prepared["camera"])
        return pap.image_ap(scores, prepared["target"], prepared["human"])

    def _truth_iou(self, occupancy: torch.Tensor, verbs: set[str], category: str) -> float:
        """IoU with the exact object voxels, when the cluster is one procedural interaction."""
        if len(verbs) != 1 or category not in lexicon.CATEGORIES:
            return float("nan")
        verb = verbs.pop()
        if verb not in lexicon.CATEGORIES[category].interactions:
            return float("nan")
        if self.config.canonicalize:
            frame = star_pose()
        else:  # without canonicalization the grid lives in the interaction's own (un-jittered) pose
            frame = torch.from_numpy(interaction_pose(lexicon.CATEGORIES[category].interactions[verb], 0.0,
                                                      np.random.default_rng(0))).float()[None]
        truth = canonical_object_voxels(self.body, category, verb, self.centres.numpy(), frame)
        predicted = occupancy.reshape(-1).numpy() >= self.config.iou_threshold
        return float((predicted & truth).sum() / max((predicted | truth).sum(), 1))

    def _mesh(self, occupancy: torch.Tensor) -> bytes | None:
        import trimesh
        from skimage.measure import marching_cubes

        values = occupancy.numpy()
        if values.max() < self.config.iou_threshold or values.min() > self.config.iou_threshold:
            return None  # no surface at the level
        vertices, faces, _, _ = marching_cubes(values, self.config.iou_threshold, spacing=(self.grid.voxel_size,) * 3)
        vertices += -self.config.extent + self.grid.voxel_size / 2
        return trimesh.Trimesh(vertices, faces).export(file_type="ply")

    def _preview(self, occupancy: torch.Tensor) -> bytes:
        """Front and side maximum projections of the occupancy over the star-posed body's silhouette."""
        values = occupancy.numpy()
        size = self.config.resolution
        body = np.zeros((size, size, size), dtype=bool)
        idx = np.floor((self.star.vertices[0].numpy() + self.config.extent) / self.grid.voxel_size).astype(int)
        idx = idx[((idx >= 0) & (idx < size)).all(1)]
        body[idx[:, 0], idx[:, 1], idx[:, 2]] = True
        panels = []
        for axis in (2, 0):  # looking along z (front), along x (side)
            heat = values.max(axis=axis)
            silhouette = body.any(axis=axis)
            if axis == 0:
                heat, silhouette = heat.T, silhouette.T  # rows: y, columns: z
            picture = np.stack([silhouette * 90.0 + heat * 255] + [silhouette * 90.0 + heat * 60] * 2, -1)
            panels.append(np.flipud(picture.transpose(1, 0, 2)))  # y up
        picture = np.concatenate(panels, 1).clip(0, 255).astype(np.uint8)
        return encode_png(np.kron(picture, np.ones((3, 3, 1), dtype=np.uint8)))


def interaction_region(centres: np.ndarray, part_vertices: np.ndarray,
                       epsilon: float = INTERACTION_DISTANCE) -> np.ndarray:
    """The canonical voxels (mask over `centres`) closer than `epsilon` to some vertex of the star-posed part."""
    distance, _ = cKDTree(part_vertices).query(centres, distance_upper_bound=epsilon)
    return distance < epsilon


def select_views(views: Views, keep: list[int]) -> Views:
    index = torch.as_tensor(keep, dtype=torch.long)
    return Views([views.masks[k] for k in keep], views.K[index], views.R[index], views.t[index], views.bones[index],
                 views.azimuths[index])


def rays_reach(points: torch.Tensor, weights: torch.Tensor, views: Views) -> list[bool]:
    """Per view: does a ray through its object mask pass through the canonical `points` (with skinning `weights`)?
    Read, as in the official code, from the aggregation's own test: a point posed by the view's bones and
    projected into its mask (one view alone aggregates to 1 exactly there)."""
    return views_hit(points, weights, views).tolist()


def _downsample(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.BOX)) >= 128


class OccupancyPipeline(Pipeline[OccupancyConfig]):
    name = "chorus-occupancy"
    description = "CHORUS: calibrated views -> canonical 3D occupancy per semantic cluster, meshes, PAP"
    config_class = OccupancyConfig
    schema = pa.schema([
        column("category", pa.string(), "the object category"),
        column("cluster", pa.string(), "the semantic cluster: all (the category), a prompt, or prompt @ body part"),
        column("base_prompt", pa.string(), "the cluster's prompt (empty: the whole category)"),
        column("body_part", pa.string(), "the cluster's body part: hands, feet, head, torso (empty: any)"),
        column("num_views", pa.int32(), "views aggregated into the grid"),
        column("occupancy", pa.binary(), "float16 (R, R, R) grid of the object's probability over the cube "
               "[-extent, extent]^3 (config), indexed x, y, z", encoding="npy", unit="probability (0-1)",
               frame="canonical SMPL star pose (pelvis at the origin, y up, metres)"),
        column("mesh_ply", pa.binary(), "the occupancy's isosurface at iou_threshold (null: no surface at that "
               "level)", encoding="ply", unit="metres", frame="canonical SMPL star pose"),
        column("preview", pa.binary(), "front and side maximum projections of the occupancy over the star-posed "
               "body", encoding="png"),
        *(column(variant, pa.float32(), f"{PAP_NAMES[variant]} over the held-out views (NaN: no test view)")
          for variant in pap.VARIANTS),
        column("num_test_views", pa.int32(), "held-out views with a non-empty object mask behind the PAP"),
        column("num_test_views_occlusion_aware", pa.int32(), "held-out views behind the occlusion-aware PAP"),
        column("truth_iou", pa.float32(), "IoU of the grid thresholded at iou_threshold with the exact object voxels "
               "of a procedural interaction (NaN: no truth)"),
    ])
    preview_column = "preview"
    allow_non_finite = frozenset({*pap.VARIANTS, "truth_iou"})  # NaN: not measured
    item_keys = frozenset({"input_id", "category", "cluster", "base_prompt", "body_part", "parent", "view_refs",
                           "test_parent", "test_refs"})

    def plan(self, config: OccupancyConfig, context: StageContext) -> list[dict]:
        datasets = context.datasets
        views_ref, views = _view_index(datasets, config.views)
        test_ref, tests = _view_index(datasets, config.test_views) if config.test_views else ("", {})
        items = []
        for (category, prompt), refs in sorted(views.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            test_refs = tests.get((category, None), [])
            groups = []
            if prompt is None and "category" in config.clusters:
                groups.append((None, None))
            if prompt is not None and "prompt" in config.clusters:
                groups.append((prompt, None))
            if prompt is not None and "prompt+part" in config.clusters:
                groups += [(prompt, part) for part in config.body_parts]
            for prompt_, part in groups:
                items.append({"input_id": f"{category}|{_cluster_name(prompt_, part)}", "category": category,
                              "cluster": _cluster_name(prompt_, part), "base_prompt": prompt_ or "",
                              "body_part": part or "", "parent": views_ref, "view_refs": refs,
                              "test_parent": test_ref, "test_refs": test_refs})
        return items

    def parents(self, config: OccupancyConfig, context: StageContext) -> list[str]:
        if not config.test_views:
            return []
        return [context.datasets.open_ref(config.test_views).ref]

    def stages(self, config: OccupancyConfig):
        return [AggregateCluster(config)]

    def dataset_metrics(self, version) -> dict[str, float]:
        """Per category, from its whole-category cluster: the four PAP variants and the test views behind them
        (the paper's table), and the mean truth IoU over its clusters where the truth is known; overall, the mean
        of each over the categories that have a figure."""
        rows = version.to_arrow(["category", "cluster", *pap.VARIANTS, "num_test_views", "truth_iou"]).to_pylist()
        metrics: dict[str, float] = {}
        for row in rows:
            if row["cluster"] == _cluster_name(None, None):
                category = row["category"]
                metrics.update({f"{name}/{category}": row[name] for name in pap.VARIANTS})
                metrics[f"test_views/{category}"] = float(row["num_test_views"])
        for category in sorted({row["category"] for row in rows}):
            known = [row["truth_iou"] for row in rows if row["category"] == category and np.isfinite(row["truth_iou"])]
            metrics[f"truth_iou/{category}"] = float(np.mean(known)) if known else float("nan")
        for name in (*pap.VARIANTS, "truth_iou"):
            values = [value for key, value in metrics.items() if key.startswith(f"{name}/") and np.isfinite(value)]
            metrics[name] = float(np.mean(values)) if values else float("nan")
        return metrics

    def report_pictures(self, version) -> dict[str, bytes]:
        """Every cluster's scores in one table; a cluster without test views says so."""
        columns = ["category", "cluster", "num_views", *pap.VARIANTS, "num_test_views", "truth_iou"]
        table = []
        for row in version.to_arrow(columns).to_pylist():
            scores = [f"{row[name]:.3f}" if row["num_test_views"] else "no test views" for name in pap.VARIANTS]
            truth = f"{row['truth_iou']:.3f}" if np.isfinite(row["truth_iou"]) else "unknown"
            table.append([row["category"], row["cluster"], str(row["num_views"]), *scores,
                          str(row["num_test_views"]), truth])
        header = ["category", "cluster", "views", "PAP", "PAP strict", "PAP occl.-aware", "PAP strict occl.-aware",
                  "test views", "truth IoU"]
        return {"scores": table_picture(header, table, f"{version.ref}: PAP (CHORUS Sec. 4.2) and truth IoU")}

    def demo_config(self, inputs: Path, execution: ExecutionConfig) -> OccupancyConfig:
        return OccupancyConfig(views="demo-chorus-views", test_views="demo-chorus-test-views", min_views=4,
                               execution=execution, output={"dataset": "demo-chorus-occupancy"})


def _view_index(datasets: DatasetStore, ref: str) -> tuple[str, dict[tuple[str, str | None], list[list[int]]]]:
    """The version's exact ref, and (category, None) / (category, base prompt) -> [shard, row] of its views."""
    version = datasets.open_ref(ref)
    index: dict[tuple[str, str | None], list[list[int]]] = defaultdict(list)
    for shard in range(len(version.shards)):
        table = version.read_shard(shard, ["category", "base_prompt"]).to_pylist()
        for row_number, row in enumerate(table):
            index[(row["category"], None)].append([shard, row_number])
            index[(row["category"], row["base_prompt"])].append([shard, row_number])
    return version.ref, index
