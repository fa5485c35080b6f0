"""Hand models in the MANO format: the user's licensed files, or the procedural stand-in (see standin.py), with MANO's
mesh or its subdivided MANO-HD-like twin (see mano_hd.py)."""

from models.hand.mano import HandModel, HandOutput, load_hands
from models.hand.mano_hd import HAND_MESHES, MANO, MANO_HD

__all__ = ["HAND_MESHES", "MANO", "MANO_HD", "HandModel", "HandOutput", "load_hands"]
