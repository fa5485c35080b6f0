"""HOGSA (Qu et al. 2025) models: mesh-bound Gaussians, pose optimization, the super-resolution module."""
