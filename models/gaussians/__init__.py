"""HOGS (HOGSA section 3.2): Gaussians bound to mesh faces, their differentiable rasterizer (gsplat on CUDA,
pure torch anywhere) and their fit to calibrated images."""

from models.gaussians.fit import FitResult, FitView, LearningRates, evaluate_views, fit_mesh_gaussians
from models.gaussians.mesh_gaussians import MeshGaussians
from models.gaussians.render import rasterize_gaussians

__all__ = ["FitResult", "FitView", "LearningRates", "MeshGaussians", "evaluate_views", "fit_mesh_gaussians",
           "rasterize_gaussians"]
