"""HOGSA (Qu et al. 2025): hand-object sequences -> Gaussian avatars -> new grasps and views, rendered as images."""
