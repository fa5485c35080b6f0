"""HOI4D's hand poses: the 2D hand keypoints (`kps2D`) that the official code boxes for the layout's palm.

Layout, as the official Affordance Diffusion code reads it (preprocess/generate_data.py, `make_bbox`):
`<root>/handpose/refinehandpose_{right,left}/<sequence>/<frame number>.pickle`, where `<sequence>` is the video's
path (`ZY…/H*/C*/N*/S*/s*/T*`, the same path as its `align_rgb/` and `2Dseg/mask/` folders) and the frame number
is unpadded (`12.pickle` for `align_rgb/00012.jpg` and `2Dseg/mask/00012.png`). Each file holds a dict of numpy
arrays: `poseCoeff` (48), `beta` (10), `trans` (3) and `kps2D` (21, 2), the MANO joints projected into the full
frame (pixels, x right, y down). The official box is [int(min x), int(min y), int(max x), int(max y)] of
`kps2D`, unpadded; where both hands have a file the right hand's box comes first and is the one the layout uses
(dataset/ho3pairs.py: `boxes[0]`), so the right hand wins here too.

Why a restricted unpickler: HOI4D ships these poses only as pickles, and unpickling calls whatever callables the
file names (`os.system`, `builtins.eval`, ...). `RestrictedUnpickler.find_class` resolves only the globals a
pickle of numpy arrays needs: `numpy.ndarray`, `numpy.dtype`, numpy's array and scalar reconstruction
(`_reconstruct`, `scalar`, `_frombuffer`, under `numpy.core` or `numpy._core`), `_codecs.encode` (how pickle
protocols 0-2 store bytes) and the builtin `set` / `frozenset`. Any other global is refused with
`RefusedGlobalError`, naming the file and the global, before anything is called. What stays callable only builds
arrays, scalars and containers from the file's data: it cannot import, open files or run code. The files are
read with `encoding="latin1"`, as HOI4D's instructions say (Python 2 pickles store array bytes as `str`).
A file can still ask for a large array; HOI4D's are a few kB.
"""

from __future__ import annotations

import codecs
import pickle
import re
from typing import Any, BinaryIO

import fsspec
import numpy as np

from models.hand_detection import keypoint_box

HAND_SIDES = ("right", "left")  # the official order: the first box found is the layout's


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """{(module, name): object} for the globals numpy pickles its arrays with, by both numpy 1 and 2 names;
    the objects are taken from numpy's own reductions, so they are exactly what numpy would unpickle."""
    array = np.zeros(1)
    reconstruct, frombuffer = array.__reduce__()[0], array.__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce__()[0]
    found = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        found |= {(f"{package}.multiarray", "_reconstruct"): reconstruct, (f"{package}.multiarray", "scalar"): scalar,
                  (f"{package}.numeric", "_frombuffer"): frombuffer}
    return found


ALLOWED_GLOBALS = {**_numpy_globals(), ("_codecs", "encode"): codecs.encode,
                   **{(module, kind.__name__): kind for module in ("builtins", "__builtin__")
                      for kind in (set, frozenset)}}


class HandPoseError(Exception):
    """A HOI4D hand-pose file that cannot be read as one: damaged, refused, or without a usable `kps2D`."""


class RefusedGlobalError(HandPoseError):
    """The pickle names a global outside ALLOWED_GLOBALS: it is refused before it is called."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays in plain containers, and nothing that can run code (see the module docstring)."""

    def __init__(self, handle: BinaryIO, name: str):
        super().__init__(handle, encoding="latin1")
        self.name = name

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise RefusedGlobalError(f"{self.name}: refused to unpickle the global {module}.{name} (only numpy "
                                     "arrays in plain containers are read from hand-pose files)") from None


def hand_pose_paths(sequence: str, frame: str) -> list[str]:
    """The hand-pose files of a frame, relative to the HOI4D root, right hand first; none for a frame whose name
    is not its number."""
    if not re.fullmatch(r"\d+", frame):
        return []
    return [f"handpose/refinehandpose_{side}/{sequence}/{int(frame)}.pickle" for side in HAND_SIDES]


def read_hand_keypoints(url: str, storage_options: dict[str, Any]) -> np.ndarray:
    """The (N, 2) `kps2D` of a hand-pose file (pixels of the full frame), unpickled without running code."""
    with fsspec.open(url, "rb", **storage_options) as handle:
        try:
            pose = RestrictedUnpickler(handle, url).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:  # damaged or not a pickle
            raise HandPoseError(f"{url}: not a readable hand-pose pickle ({type(exc).__name__}: {exc})") from None
    keypoints = pose.get("kps2D") if isinstance(pose, dict) else None
    if not (isinstance(keypoints, np.ndarray) and keypoints.dtype.kind in "iuf" and keypoints.ndim == 2
            and keypoints.shape[1] == 2 and len(keypoints) and np.isfinite(keypoints).all()):
        raise HandPoseError(f"{url}: holds no kps2D array of finite (x, y) pixel coordinates")
    return keypoints.astype(float)


def hand_keypoints_box(keypoints: np.ndarray) -> list[float]:
    """The official box of the keypoints: their min and max, each truncated toward zero by int()."""
    return [float(int(v)) for v in keypoint_box(keypoints)]
