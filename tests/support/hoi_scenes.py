"""Procedural HOI images with known answers: one person (a tall red bar) and one object per image, the verb
fixed by where the object is. A cup (blue square) beside the person's upper half is held; a ball (green disc)
at the person's feet is kicked. Boxes are exact (the shapes are drawn from them), so a recognizer trained on
these images must find the very <person, verb, object> triplets it was shown."""

from __future__ import annotations

import numpy as np
import torch

OBJECTS = ("__background__", "person", "cup", "ball")
VERBS = ("hold", "kick")
SIZE = 96


def _draw_box(image: np.ndarray, box, color) -> None:
    x0, y0, x1, y1 = (int(v) for v in box)
    image[y0:y1, x0:x1] = color


def _draw_disc(image: np.ndarray, box, color) -> None:
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    radius = (x1 - x0) / 2
    image[(xs - (x0 + x1) / 2) ** 2 + (ys - (y0 + y1) / 2) ** 2 <= radius**2] = color


def hoi_scene(index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[int, int, str]]:
    """Image `index`: (image (3, 96, 96) in [0, 1], target {boxes, labels, hoi}, the triplet (0, 1, verb)).
    Even indices hold a cup, odd ones kick a ball; the person stands at a position that varies with `index`."""
    rng = np.random.default_rng(index)
    image = np.full((SIZE, SIZE, 3), 0.5, np.float32) + rng.normal(0, 0.02, (SIZE, SIZE, 3)).astype(np.float32)
    x, y = 12 + 8 * (index % 5), 14 + 3 * (index % 3)
    person = [x, y, x + 20, y + 64]
    _draw_box(image, person, (0.85, 0.15, 0.1))
    if index % 2 == 0:
        obj, label, verb = [x + 22, y + 18, x + 40, y + 36], "cup", "hold"
        _draw_box(image, obj, (0.1, 0.2, 0.9))
    else:
        obj, label, verb = [x + 20, y + 46, x + 40, y + 66], "ball", "kick"
        _draw_disc(image, obj, (0.1, 0.8, 0.2))
    target = {"boxes": torch.tensor([person, obj], dtype=torch.float32),
              "labels": torch.tensor([OBJECTS.index("person"), OBJECTS.index(label)]),
              "hoi": torch.tensor([[0, 1, VERBS.index(verb)]])}
    return torch.from_numpy(np.clip(image, 0, 1)).permute(2, 0, 1).contiguous(), target, (0, 1, verb)


def write_hoi4d_sequence(root, seeds, hand_colour=(128, 0, 0), object_colour=(0, 128, 0)):
    """One HOI4D sequence (a mug, class folder C2) under `root`: frame k is render_hand_object(seeds[k]) as
    align_rgb/<k:05d>.jpg with its colour mask 2Dseg/mask/<k:05d>.png, the hand labelled without its forearm
    (inside the scene's hand box), as HOI4D labels it. Returns the sequence folder and the scenes."""
    from PIL import Image

    from tasks.procedural.hand_object import render_hand_object

    sequence = root / "ZY20210800001" / "H1" / "C2" / "N01" / "S1" / "s1" / "T1"
    (sequence / "align_rgb").mkdir(parents=True)
    (sequence / "2Dseg" / "mask").mkdir(parents=True)
    scenes = [render_hand_object(seed, object_class="mug") for seed in seeds]
    for frame, scene in enumerate(scenes):
        Image.fromarray(scene.image).save(sequence / "align_rgb" / f"{frame:05d}.jpg", quality=95)
        colours = np.zeros(scene.image.shape, np.uint8)
        colours[scene.object_mask] = object_colour
        x0, y0, x1, y1 = scene.hand_box
        colours[y0:y1, x0:x1][scene.hand_mask[y0:y1, x0:x1]] = hand_colour
        Image.fromarray(colours).save(sequence / "2Dseg" / "mask" / f"{frame:05d}.png")
    return sequence, scenes
