"""Torch modules and geometric models (body/hand models, layout splat, LayoutNet, ContentNet, mesh-bound
Gaussians, pose optimization, super-resolution, C-HOI, occupancy/LBS, PAP); checkpoints go through
`hoi_factory.model_store`."""
