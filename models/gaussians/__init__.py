"""HOGS: mesh-bound Gaussian splatting (HOGSA section 3.2)."""
