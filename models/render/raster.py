"""A vectorized triangle z-buffer in numpy: exact masks and depth for procedural ground truth.

Each triangle enumerates the pixel centres inside its clipped bounding box (no Python loop over
triangles), tests them with edge functions and keeps the nearest depth per pixel.
"""

from __future__ import annotations

import numpy as np

NEAR = 1e-3


def rasterize(vertices_cam: np.ndarray, faces: np.ndarray, K: np.ndarray, width: int, height: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Camera-space vertices (N, 3) -> depth (H, W) (inf where empty) and face index (H, W) (-1 where empty)."""
    depth = np.full(height * width, np.inf)
    face_index = np.full(height * width, -1, dtype=np.int64)
    tri = vertices_cam[faces]  # (F, 3, 3)
    visible = (tri[:, :, 2] > NEAR).all(axis=1)
    tri, ids = tri[visible], np.nonzero(visible)[0]
    if len(tri) == 0:
        return depth.reshape(height, width), face_index.reshape(height, width)
    xy = (tri @ K.T)[:, :, :2] / tri[:, :, 2:3]
    x0 = np.clip(np.ceil(xy[:, :, 0].min(1) - 0.5), 0, width).astype(np.int64)
    x1 = np.clip(np.floor(xy[:, :, 0].max(1) - 0.5), -1, width - 1).astype(np.int64)
    y0 = np.clip(np.ceil(xy[:, :, 1].min(1) - 0.5), 0, height).astype(np.int64)
    y1 = np.clip(np.floor(xy[:, :, 1].max(1) - 0.5), -1, height - 1).astype(np.int64)
    w, h = x1 - x0 + 1, y1 - y0 + 1
    keep = (w > 0) & (h > 0)
    tri, ids, xy, x0, y0, w, h = tri[keep], ids[keep], xy[keep], x0[keep], y0[keep], w[keep], h[keep]
    counts = w * h
    owner = np.repeat(np.arange(len(tri)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    px = x0[owner] + local % w[owner]
    py = y0[owner] + local // w[owner]
    cx, cy = px + 0.5, py + 0.5
    a, b, c = xy[owner, 0], xy[owner, 1], xy[owner, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    w0 = (b[:, 0] - cx) * (c[:, 1] - cy) - (b[:, 1] - cy) * (c[:, 0] - cx)
    w1 = (c[:, 0] - cx) * (a[:, 1] - cy) - (c[:, 1] - cy) * (a[:, 0] - cx)
    w2 = area - w0 - w1
    sign = np.sign(area)
    inside = (area != 0) & (w0 * sign >= 0) & (w1 * sign >= 0) & (w2 * sign >= 0)
    owner, px, py, area = owner[inside], px[inside], py[inside], area[inside]
    bary = np.stack([w0[inside], w1[inside], w2[inside]], 1) / area[:, None]
    # Perspective-correct depth: interpolate 1/z in screen space.
    z = 1.0 / (bary / tri[owner, :, 2]).sum(1)
    pixel = py * width + px
    order = np.lexsort((z, pixel))  # by pixel, nearest first
    pixel, z, owner = pixel[order], z[order], owner[order]
    first = np.ones(len(pixel), dtype=bool)
    first[1:] = pixel[1:] != pixel[:-1]
    depth[pixel[first]] = z[first]
    face_index[pixel[first]] = ids[owner[first]]
    return depth.reshape(height, width), face_index.reshape(height, width)
