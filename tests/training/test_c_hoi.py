"""C-HOI: mAP_role against a hand-worked case."""

import pytest

from models.c_hoi.evaluation import Triplet, map_role


def test_map_role_on_a_hand_worked_case():
    h1, h2, h3 = (0, 0, 10, 20), (50, 0, 60, 20), (0, 0, 10, 20)
    cup, knife = (10, 10, 20, 20), (60, 10, 70, 15)
    truths = [Triplet("A", "hold", h1, cup), Triplet("A", "hold", h2, knife), Triplet("B", "hold", h3, cup),
              Triplet("A", "smile", h1, None)]
    near_h1 = (1, 0, 10, 20)  # IoU 0.9 with h1
    detections = [
        Triplet("A", "hold", near_h1, cup, 0.9),  # TP (gt 1)
        Triplet("A", "hold", h1, cup, 0.8),  # FP: gt 1 is already matched
        Triplet("B", "hold", h3, cup, 0.7),  # TP (gt 3)
        Triplet("A", "hold", h2, cup, 0.6),  # FP: right person, wrong object
        Triplet("A", "hold", h2, knife, 0.5),  # TP (gt 2)
        Triplet("A", "smile", h1, cup, 0.9),  # FP: the role has no object
        Triplet("A", "smile", h1, None, 0.4),  # TP
        Triplet("A", "run", h1, None, 0.9),  # a verb without ground truth is not averaged
    ]
    # hold: P/R after each detection: 1/(1/3), .5/(1/3), 2/3/(2/3), .5/(2/3), .6/1
    # interpolated AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 0.6
    hold = 1 / 3 + 2 / 9 + 0.2
    smile = 0.5  # one FP then one TP: recall 1 reached at precision 1/2
    mean, per_verb = map_role(detections, truths)
    assert per_verb == pytest.approx({"hold": hold, "smile": smile})
    assert mean == pytest.approx((hold + smile) / 2)
    assert map_role([], truths)[0] == 0.0
