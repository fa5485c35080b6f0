"""Small CPU renderers for exact ground truth: a triangle z-buffer and camera helpers."""
