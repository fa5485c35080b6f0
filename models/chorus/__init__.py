"""CHORUS geometry: the canonical grid and its LBS weights (canonical.py), occupancy aggregation over
calibrated views, Eq. 6 (aggregate.py), and Projective Average Precision (pap.py)."""
