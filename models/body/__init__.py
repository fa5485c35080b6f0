"""Body models in the SMPL format: the user's licensed files, or the procedural stand-in (see standin.py)."""

from models.body.smpl import BodyModel, load_body_model

__all__ = ["BodyModel", "load_body_model"]
