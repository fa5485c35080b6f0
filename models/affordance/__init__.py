"""Affordance Diffusion (Ye et al., CVPR 2023; NVlabs/affordance_diffusion): the 5-parameter hand layout and its
splat (`layout`), LayoutNet (`layoutnet`), ContentNet (`contentnet`) and the two chained (`synthesis`)."""
