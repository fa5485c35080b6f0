"""Pinhole cameras in the person-centric frame: x_cam = R x + t, pixels = K x_cam (OpenCV convention,
camera looking down +z, image y down)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

CHORUS_FOV_DEGREES = 46.4


def intrinsics(width: int, height: int, fov_degrees: float = CHORUS_FOV_DEGREES,
               across: Literal["short", "width"] = "short") -> np.ndarray:
    """K for a square-pixel camera whose field of view spans the shorter image side, or the width (the
    official CHORUS calibration's convention)."""
    span = width if across == "width" else min(width, height)
    focal = 0.5 * span / math.tan(math.radians(fov_degrees) / 2)
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]])


def look_at(eye: np.ndarray, target: np.ndarray,
            up: np.ndarray = np.array([0, 1.0, 0])) -> tuple[np.ndarray, np.ndarray]:
    """R, t of a camera at `eye` looking at `target`, image up along `up`."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-6:  # looking straight up or down
        right = np.cross(forward, np.array([0, 0, 1.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    return rotation, -rotation @ eye


def orbit_camera(azimuth_degrees: float, elevation_degrees: float, distance: float,
                 target: np.ndarray = np.zeros(3)) -> tuple[np.ndarray, np.ndarray]:
    """A camera on a sphere around `target`; azimuth 0 looks at the person's front (+z), 90 at their left."""
    az, el = math.radians(azimuth_degrees), math.radians(elevation_degrees)
    eye = target + distance * np.array([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])
    return look_at(eye, target)


def camera_azimuth(rotation: np.ndarray, translation: np.ndarray) -> float:
    """Azimuth (degrees, 0..360) of the camera centre around the person's vertical axis."""
    centre = -rotation.T @ translation
    return math.degrees(math.atan2(centre[0], centre[2])) % 360


def project(points: np.ndarray, K: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """(N, 3) world points -> (N, 3): pixel x, pixel y, depth."""
    cam = points @ rotation.T + translation
    pixels = cam @ K.T
    return np.concatenate([pixels[:, :2] / pixels[:, 2:3], cam[:, 2:3]], axis=1)
