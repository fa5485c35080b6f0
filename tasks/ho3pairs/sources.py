"""Where HO3Pairs inputs come from: planning (light work items) and loading (pixels and masks) per source.

- `folder`: `images/<stem>.<ext>`, with optional `hand_masks/<stem>.png` (hand + forearm),
  `object_masks/<stem>.png` (white = in), `object_only/<stem>.<ext>` (the true object-only view, for quality
  figures), `classes.json` ({stem: object class}; else the config's `source.object_class`) and `hand_boxes.json`
  ({stem: [x0, y0, x1, y1]}, the hand without the forearm, as a hand detector gives it: the layout's palm).
- `hoi4d`: HOI4D's layout, `<...>/C<k>/<...>/align_rgb/<frame>.jpg` (decoded frames) with
  `2Dseg/mask/<frame>.png` beside `align_rgb`; the object class comes from the `C<k>` folder, hand pixels are
  those of `source.hand_colours` in the mask, object pixels any other non-black colour; the hand box is the
  official one, the box of HOI4D's 2D hand keypoints (`<root>/handpose/refinehandpose_{right,left}/<sequence>/
  <frame number>.pickle`, read without running code: tasks/ho3pairs/hoi4d.py), else the hand mask's box (HOI4D
  labels the hand without the arm).
- `video`: video files (any container PyAV/FFmpeg reads), one frame every 1/`source.frame_rate` seconds; no masks,
  so hands come from a detector.
- `hogsa`: a `hogsa` dataset version (name or name/version in `inputs`): composites with exact hand and object
  masks and the true object-only render of the same view; the hand box is the box of the projected MANO joints.

Each loaded row says where its hand box came from (`hand_box_source`, tasks/ho3pairs/crop.py HAND_BOX_SOURCES):
`provided` (hand_boxes.json), `keypoints` (HOI4D's kps2D, HOGSA's MANO joints), `mask` (HOI4D frames without
hand keypoints), or None: the hand stage's detector may give one (video frames, folders without
hand_boxes.json), else the layout falls back to the mask's own palm.

The planning helpers take the fsspec options of the inputs (`StageContext.storage_options`); the loading stages
get them in `setup`.
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any

import fsspec
import numpy as np

from hoi_factory.codec import decode_image, decode_mask
from hoi_factory.context import StageContext
from hoi_factory.optional import require
from hoi_factory.parents import PARENT_KEYS
from hoi_factory.pipeline import PlanError
from hoi_factory.stage import MapStage, Reject, Row
from models.hand_detection import keypoint_box
from tasks.ho3pairs.crop import mask_box
from tasks.ho3pairs.hoi4d import HandPoseError, hand_keypoints_box, hand_pose_paths, read_hand_keypoints
from tasks.images.stages import ReadImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
# HOI4D's object classes by the number in its C<k> folders (from the HOI4D instructions).
HOI4D_CLASSES = ["", "toy car", "mug", "laptop", "storage furniture", "bottle", "safe", "bowl", "bucket", "scissors",
                 "", "pliers", "kettle", "knife", "trash can", "", "", "lamp", "stapler", "", "chair"]


# The keys of each source's work items (the pipeline adds `source`); LoadSample reads `image` or `video`.
SOURCE_ITEM_KEYS = {
    "folder": frozenset({"input_id", "image", "hand_mask", "object_mask", "object_only", "object_class", "hand_box",
                         "frame_time"}),
    "hoi4d": frozenset({"input_id", "image", "hoi4d_mask", "hand_pose", "object_only", "object_class",
                       "frame_time"}),
    "video": frozenset({"input_id", "video", "frame_time", "object_class", "object_only"}),
    "hogsa": frozenset({"input_id", "frame_time", "hand_box"}) | PARENT_KEYS,
}


def _filesystem(url: str, storage_options: dict[str, Any]):
    fs, root = fsspec.core.url_to_fs(url, **storage_options)
    if not fs.isdir(root):
        raise PlanError(f"input folder {url!r} does not exist or is not a folder")
    return fs, root.rstrip("/")


def _join(url: str, relative: str) -> str:
    return url.rstrip("/") + "/" + relative


def _listing(fs, root: str, folder: str, suffixes: tuple[str, ...]) -> dict[str, str]:
    """{stem: relative path} of the files in root/folder with one of `suffixes`."""
    base = f"{root}/{folder}" if folder else root
    if not fs.isdir(base):
        return {}
    found = {}
    for path in sorted(fs.find(base)):
        relative = posixpath.relpath(path, root)
        stem, suffix = posixpath.splitext(posixpath.relpath(path, base))
        if suffix.lower() in suffixes:
            found[stem] = relative
    return found


def _json_map(fs, root: str, url: str, name: str, valid, what: str) -> dict:
    """An optional {image stem: value} JSON file of the folder, checked whole before any work starts."""
    if not fs.isfile(f"{root}/{name}"):
        return {}
    try:
        mapping = json.loads(fs.cat_file(f"{root}/{name}"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlanError(f"{url}/{name} is not valid JSON: {exc}") from None
    if not isinstance(mapping, dict) or not all(valid(v) for v in mapping.values()):
        raise PlanError(f"{url}/{name} must map image stems to {what}")
    return mapping


def plan_folder(url: str, object_class: str, storage_options: dict[str, Any]) -> list[dict[str, Any]]:
    fs, root = _filesystem(url, storage_options)
    images = _listing(fs, root, "images", IMAGE_SUFFIXES)
    if not images:
        raise PlanError(f"{url!r} has no images/ folder with images in it (see the folder layout in the docs)")
    hands, objects = _listing(fs, root, "hand_masks", (".png",)), _listing(fs, root, "object_masks", (".png",))
    truths = _listing(fs, root, "object_only", IMAGE_SUFFIXES)
    classes = _json_map(fs, root, url, "classes.json", lambda v: isinstance(v, str), "class names (strings)")
    boxes = _json_map(fs, root, url, "hand_boxes.json",
                      lambda v: isinstance(v, list) and len(v) == 4 and all(isinstance(x, (int, float)) for x in v)
                      and v[2] > v[0] and v[3] > v[1], "hand boxes [x0, y0, x1, y1] (pixels, x1 > x0, y1 > y0)")
    return [{"input_id": relative, "image": _join(url, relative),
             "hand_mask": _join(url, hands[stem]) if stem in hands else None,
             "object_mask": _join(url, objects[stem]) if stem in objects else None,
             "object_only": _join(url, truths[stem]) if stem in truths else None,
             "object_class": classes.get(stem, object_class), "hand_box": boxes.get(stem), "frame_time": None}
            for stem, relative in images.items()]


def plan_hoi4d(url: str, storage_options: dict[str, Any]) -> list[dict[str, Any]]:
    fs, root = _filesystem(url, storage_options)
    hand_poses = {f"handpose/{stem}.pickle" for stem in _listing(fs, root, "handpose", (".pickle",))}
    items = []
    for stem, relative in _listing(fs, root, "", (".jpg", ".png")).items():
        parts = relative.split("/")
        if len(parts) < 2 or parts[-2] != "align_rgb":
            continue
        sequence, frame = "/".join(parts[:-2]), posixpath.splitext(parts[-1])[0]
        category = next((int(m.group(1)) for p in parts if (m := re.fullmatch(r"C(\d+)", p))), 0)
        mask = f"{sequence}/2Dseg/mask/{frame}.png"
        hand_pose = next((path for path in hand_pose_paths(sequence, frame) if path in hand_poses), None)
        items.append({"input_id": relative, "image": _join(url, relative),
                      "hoi4d_mask": _join(url, mask) if fs.isfile(f"{root}/{mask}") else None,
                      "hand_pose": _join(url, hand_pose) if hand_pose else None,
                      "object_only": None, "frame_time": None,
                      "object_class": HOI4D_CLASSES[category] if category < len(HOI4D_CLASSES) else ""})
    if not items:
        raise PlanError(f"{url!r} has no HOI4D frames (<sequence>/align_rgb/<frame>.jpg)")
    return items


def plan_video(url: str, frame_rate: float, object_class: str, storage_options: dict[str, Any]
               ) -> list[dict[str, Any]]:
    av = require("av", "video", "video inputs")
    fs, root = _filesystem(url, storage_options)
    items = []
    for relative in _listing(fs, root, "", VIDEO_SUFFIXES).values():
        try:
            with fs.open(f"{root}/{relative}", "rb") as handle, av.open(handle) as container:
                stream = container.streams.video[0]
                duration = float(stream.duration * stream.time_base) if stream.duration else \
                    (container.duration or 0) / 1e6
        except (av.FFmpegError, IndexError, OSError) as exc:
            items.append({"input_id": relative, "video": _join(url, relative), "frame_time": 0.0,
                          "object_class": object_class, "object_only": None, "unreadable": str(exc)[:200]})
            continue
        times = np.arange(0, max(duration, 1e-9), 1 / frame_rate)
        items += [{"input_id": relative, "index": i, "video": _join(url, relative), "frame_time": float(time),
                   "object_class": object_class, "object_only": None} for i, time in enumerate(times)]
    if not items:
        raise PlanError(f"{url!r} has no video files ({', '.join(VIDEO_SUFFIXES)})")
    return items


class NoFrameError(LookupError):
    """The video ends before the time asked for (its duration in the header was longer than its frames)."""


def read_video_frame(url: str, time: float, storage_options: dict[str, Any]) -> np.ndarray:
    """The first frame at or after `time` seconds, RGB uint8."""
    av = require("av", "video", "video inputs")
    with fsspec.open(url, "rb", **storage_options) as handle, av.open(handle) as container:
        stream = container.streams.video[0]
        container.seek(int(time / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.pts is None or frame.pts * stream.time_base >= time - 0.5 * float(1 / stream.average_rate):
                return frame.to_ndarray(format="rgb24")
    raise NoFrameError(f"no frame at {time:.3f} s")


HOGSA_COLUMNS = ["image", "object_only_image", "left_mask", "right_mask", "object_mask", "object_name",
                 "left_joints_2d", "right_joints_2d"]
LOADED_KEYS = frozenset({"image_array", "hand_mask_array", "object_mask_array", "object_only_array"})


def plan_hogsa(datasets, ref: str) -> list[dict[str, Any]]:
    from hoi_factory.parents import items_from_dataset

    return [{**item, "frame_time": None, "hand_box": None} for item in items_from_dataset(datasets.open_ref(ref))]


def joints_box(joints_2d: list[list[float]] | None) -> list[float] | None:
    """The box (x0, y0, x1, y1) of (21, 2) projected joints (None: the hand is absent), as the official code
    boxes HOI4D's hand keypoints."""
    if joints_2d is None or len(joints_2d) == 0:
        return None
    return list(keypoint_box(np.reshape(joints_2d, (-1, 2))))


class LoadHOGSASample(MapStage):
    """A `hogsa` row (read by ReadParentRows) -> the arrays LoadSample gives: hands = both MANO hands' pixels;
    the hand box (the layout's palm) = the box of the projected MANO joints of the hand with more visible
    pixels.

    An undecodable PNG, or a mask or view whose size differs from the image, rejects the sample."""

    needs = frozenset(HOGSA_COLUMNS)
    makes = LOADED_KEYS | {"object_class", "hand_box", "hand_box_source"}

    def process_row(self, row: Row) -> Row | Reject:
        decoded = {}
        for key in ("image", "object_only_image", "left_mask", "right_mask", "object_mask"):
            try:
                decoded[key] = decode_mask(row[key]) if key.endswith("_mask") else decode_image(row[key])
            except (OSError, ValueError):  # PIL: not an image (UnidentifiedImageError is an OSError), truncated data
                return Reject.of(row, "unreadable parent image", key)
        image, truth = decoded["image"][..., :3], decoded["object_only_image"][..., :3]
        for key in ("object_only_image", "left_mask", "right_mask", "object_mask"):
            if decoded[key].shape[:2] != image.shape[:2]:
                return Reject.of(row, "parent image sizes differ",
                                 f"{key} {decoded[key].shape[:2]} vs {image.shape[:2]}")
        hands = decoded["left_mask"] | decoded["right_mask"]
        main_hand = max(("left", "right"), key=lambda side: decoded[f"{side}_mask"].sum())
        box = joints_box(row[f"{main_hand}_joints_2d"])
        return {**row, "object_class": row["object_name"], "image_array": image, "hand_mask_array": hands,
                "object_mask_array": decoded["object_mask"], "object_only_array": truth,
                "hand_box": box, "hand_box_source": "keypoints" if box else None}


class LoadSample(MapStage):
    """A work item -> `image_array`, and the masks / true object-only view the source provides.

    Missing or unreadable files, video frames past the end and masks whose size differs from the image reject
    the sample, with the reason; so does a HOI4D hand-pose file that is damaged or names a refused global.
    """

    batch_size = 8
    makes = LOADED_KEYS | {"hand_box_source"}

    def __init__(self, source: str, hand_colours: list[tuple[int, int, int]]):
        self.video = source == "video"
        self.hoi4d = source == "hoi4d"
        if self.hoi4d:  # its hand keypoints, else its hand masks (the hand alone), give the layout's palm
            self.makes = self.makes | {"hand_box"}
        self.needs = frozenset({"video", "frame_time"}) if self.video else frozenset({"image"})
        self.read_image = ReadImage()
        self.hand_colours = np.asarray(hand_colours, dtype=np.uint8).reshape(-1, 3)

    def setup(self, context: StageContext) -> None:
        self.read_image.setup(context)
        self.storage_options = context.storage_options

    def _image(self, row: Row, url: str) -> np.ndarray | Reject:
        result = self.read_image.process_row({**row, "path": url})
        return result if isinstance(result, Reject) else result["pixels"]

    def _frame(self, row: Row) -> np.ndarray | Reject:
        av = require("av", "video", "video inputs")
        try:
            return read_video_frame(row["video"], row["frame_time"], self.storage_options(row["video"]))
        except FileNotFoundError:  # gone since it was planned
            return Reject.of(row, "missing file", row["video"])
        except NoFrameError as exc:  # the header's duration promised more frames than the file holds
            return Reject.of(row, "no frame at that time", str(exc))
        except (av.FFmpegError, IndexError) as exc:  # damaged past the header the plan read
            return Reject.of(row, "unreadable video", f"{type(exc).__name__}: {exc}")

    def process_row(self, row: Row) -> Row | Reject:
        if row.get("unreadable"):
            return Reject.of(row, "unreadable video", row["unreadable"])
        image = self._frame(row) if self.video else self._image(row, row["image"])
        if isinstance(image, Reject):
            return image
        loaded = {"image_array": image, "hand_mask_array": None, "object_mask_array": None, "object_only_array": None,
                  "hand_box_source": "provided" if row.get("hand_box") else None}  # a folder's hand_boxes.json
        if self.hoi4d:
            loaded["hand_box"] = None
        for key, target in (("hand_mask", "hand_mask_array"), ("object_mask", "object_mask_array"),
                            ("object_only", "object_only_array"), ("hoi4d_mask", "hoi4d_mask_array")):
            if row.get(key):
                value = self._image(row, row[key])
                if isinstance(value, Reject):
                    return Reject.of(row, f"{key.replace('_', ' ')}: {value.reason}", value.detail)
                if value.shape[:2] != image.shape[:2]:
                    return Reject.of(row, f"{key.replace('_', ' ')} size differs from the image",
                                     f"{value.shape[1]}x{value.shape[0]} vs {image.shape[1]}x{image.shape[0]}")
                loaded[target] = value
        if loaded.get("hoi4d_mask_array") is not None:
            colours = loaded.pop("hoi4d_mask_array")
            is_hand = (colours[:, :, None, :] == self.hand_colours[None, None]).all(-1).any(-1)
            loaded["hand_mask_array"], loaded["object_mask_array"] = is_hand, colours.any(-1) & ~is_hand
            box = mask_box(is_hand)
            loaded["hand_box"], loaded["hand_box_source"] = (list(box), "mask") if box else (None, None)
        if row.get("hand_pose"):
            try:
                keypoints = read_hand_keypoints(row["hand_pose"], self.storage_options(row["hand_pose"]))
            except (HandPoseError, FileNotFoundError) as exc:
                return Reject.of(row, "unreadable hand pose", str(exc))
            loaded["hand_box"], loaded["hand_box_source"] = hand_keypoints_box(keypoints), "keypoints"
        for target in ("hand_mask_array", "object_mask_array"):
            if loaded[target] is not None and loaded[target].ndim == 3:
                loaded[target] = loaded[target].mean(-1) > 127
        return {**row, **loaded}
