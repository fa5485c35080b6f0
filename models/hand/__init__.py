"""Hand models in the MANO format: the user's licensed files, or the procedural stand-in (see standin.py)."""

from models.hand.mano import HandModel, HandOutput, load_hands

__all__ = ["HandModel", "HandOutput", "load_hands"]
