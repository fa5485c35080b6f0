"""What the offline prompt generator and the procedural stand-in know about each object category.

Every interaction names a verb phrase and a *placement*: where the stand-in puts the object (relative to
one SMPL joint, in rest-pose metres) and the body pose it takes. Objects are unions of convex primitives
so their exact voxels are cheap to compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import trimesh

# COCO's 80 category names, "_" standing for a space (LVIS names of the lexicon are accepted too).
COCO_CATEGORIES = tuple(name.replace("_", " ") for name in (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign parking_meter "
    "bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee "
    "skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle "
    "wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake "
    "chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave oven "
    "toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
).split())


@dataclass(frozen=True)
class Placement:
    joint: str  # SMPL joint the object moves with
    offset: tuple[float, float, float]  # object centre relative to the joint, rest pose, metres
    pose: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # base pose, axis-angle per joint
    body_part: str = "hands"  # the part in contact, for semantic clusters


PLACEMENTS = {
    "right_hand_forward": Placement("right_wrist", (-0.12, -0.07, 0.0),
                                    {"right_shoulder": (0, 1.3, 0), "right_elbow": (0, 0.4, 0)}),
    "right_hand_to_face": Placement("right_wrist", (-0.12, -0.05, 0.0),
                                    {"right_shoulder": (0, 1.1, -0.6), "right_elbow": (0, 1.9, 0)}),
    "right_hand_raised": Placement("right_wrist", (-0.14, 0.0, 0.0), {"right_shoulder": (0, 0, -1.3)}),
    "left_hand_at_side": Placement("left_wrist", (0.16, 0.0, 0.0), {"left_shoulder": (0, 0, -1.25)}),
    "on_head": Placement("head", (0.0, 0.17, 0.0), {}, "head"),
    "on_back": Placement("spine3", (0.0, -0.04, -0.24), {}, "torso"),
    "under_feet": Placement("pelvis", (0.0, -1.01, 0.06), {}, "feet"),
    "under_pelvis": Placement("pelvis", (0.0, -0.33, 0.16), {"left_hip": (-1.5, 0, 0), "right_hip": (-1.5, 0, 0),
                                                              "left_knee": (1.5, 0, 0), "right_knee": (1.5, 0, 0)},
                              "torso"),
    "at_right_foot": Placement("right_ankle", (-0.02, -0.02, 0.26), {"right_hip": (-0.4, 0, 0)}, "feet"),
}


def _box(x: float, y: float, z: float) -> list[trimesh.Trimesh]:
    return [trimesh.creation.box(extents=(x, y, z))]


def _cylinder(radius: float, height: float, axis: str = "y") -> trimesh.Trimesh:
    mesh = trimesh.creation.cylinder(radius=radius, height=height, sections=24)
    if axis == "y":
        mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0)))
    return mesh


@dataclass(frozen=True)
class Category:
    parts: tuple  # convex trimesh primitives, centred at the object's origin
    interactions: dict[str, str]  # verb phrase -> placement name
    colour: tuple[int, int, int]


CATEGORIES: dict[str, Category] = {
    "cup": Category((_cylinder(0.05, 0.11),), {"holding": "right_hand_forward", "drinking from": "right_hand_to_face"},
                    (200, 60, 50)),
    "bottle": Category((_cylinder(0.04, 0.26),), {"holding": "right_hand_forward",
                                                   "drinking from": "right_hand_to_face"}, (40, 150, 90)),
    "cell phone": Category(tuple(_box(0.08, 0.15, 0.02)), {"talking on": "right_hand_to_face",
                                                           "looking at": "right_hand_forward"}, (30, 30, 40)),
    "backpack": Category(tuple(_box(0.32, 0.42, 0.16)), {"wearing": "on_back", "carrying": "left_hand_at_side"},
                         (60, 90, 180)),
    "suitcase": Category(tuple(_box(0.42, 0.5, 0.2)), {"pulling": "left_hand_at_side",
                                                       "carrying": "left_hand_at_side"}, (120, 70, 160)),
    "handbag": Category(tuple(_box(0.3, 0.22, 0.1)), {"carrying": "left_hand_at_side"}, (170, 110, 40)),
    "umbrella": Category((_cylinder(0.45, 0.06),), {"holding up": "right_hand_raised"}, (30, 140, 200)),
    "sports ball": Category((trimesh.creation.icosphere(2, radius=0.12),),
                            {"kicking": "at_right_foot", "throwing": "right_hand_raised"}, (230, 150, 30)),
    "skateboard": Category(tuple(_box(0.22, 0.07, 0.8)), {"riding": "under_feet", "carrying": "left_hand_at_side"},
                           (150, 40, 40)),
    "chair": Category(tuple(_box(0.46, 0.08, 0.46)), {"sitting on": "under_pelvis"}, (110, 80, 50)),
    "bench": Category(tuple(_box(1.1, 0.08, 0.42)), {"sitting on": "under_pelvis"}, (90, 110, 60)),
    "hat": Category((_cylinder(0.13, 0.1),), {"wearing": "on_head"}, (200, 180, 60)),
    "frisbee": Category((_cylinder(0.13, 0.03),), {"throwing": "right_hand_forward",
                                                    "catching": "right_hand_raised"}, (240, 240, 240)),
    "tennis racket": Category(tuple(_box(0.28, 0.03, 0.6)), {"swinging": "right_hand_forward"}, (80, 200, 120)),
}

SUBJECTS = ("a man", "a woman", "a person", "a boy", "a girl", "an old man", "a young woman", "an athlete",
            "a tourist", "a student")
SETTINGS = ("in a park", "on a city street", "at home", "in a kitchen", "at the beach", "in an office",
            "on a sunny day", "in the rain", "at a station", "in a garden", "")


def known_category(name: str) -> bool:
    return name in CATEGORIES or name in COCO_CATEGORIES


def check_categories(names: list[str], procedural: bool) -> None:
    """Raise ValueError naming every unknown category (and the nearest known names)."""
    import difflib

    known = sorted(CATEGORIES) if procedural else sorted(set(COCO_CATEGORIES) | set(CATEGORIES))
    unknown = [n for n in names if n not in known]
    if unknown:
        hints = {n: difflib.get_close_matches(n, known, n=3) for n in unknown}
        scope = "the procedural stand-in's lexicon" if procedural else "COCO or the lexicon"
        raise ValueError(f"unknown categories for {scope}: " + "; ".join(
            f"{n!r}" + (f" (did you mean {', '.join(map(repr, h))}?)" if h else "") for n, h in hints.items()))


def verb_of(prompt: str, category: str) -> str | None:
    """The lexicon verb phrase a prompt uses for its category (longest match), if any."""
    text = prompt.lower()
    matches = ([verb for verb in CATEGORIES[category].interactions if f"{verb} " in text]
               if category in CATEGORIES else [])
    return max(matches, key=len) if matches else None


# The demo's categories: procedural ones that COCO also has, so its COCO-EFT stand-in gives every aggregated
# category test views (PAP measured for each).
DEMO_CATEGORIES = ("backpack", "cup", "umbrella")
