"""C-HOI evaluation: V-COCO role AP by vsrl_eval's rules, on hand-worked cases; V-COCO and HICO-DET result formats.

Boxes are inclusive pixel boxes as vsrl_eval reads them: (0, 0, 9, 19) is 10 x 20 = 200 px. AP is `voc_ap`:
the precision envelope summed over the recall steps.
"""

import json
import math
import pickle

import pytest

from models.c_hoi.evaluation import (
    Person,
    Triplet,
    from_hico_det,
    from_vcoco,
    image_persons,
    map_role,
    overlaps,
    role_ap,
    to_hico_det,
    to_vcoco,
)
from tasks.c_hoi.annotations import parse_entry

P1 = (0, 0, 9, 19)
CUP, TV, BALL = (20, 10, 29, 19), (30, 0, 49, 9), (30, 30, 39, 39)
WRONG_CUP = (25, 10, 34, 19)  # IoU with CUP: 5 x 10 = 50 / (100 + 100 - 50) = 1/3 < 0.5


def test_a_perfect_detection_scores_one():
    persons = [Person("1", P1, {"hold": CUP})]
    detections = [Triplet("1", "hold", P1, CUP, 0.9)]
    assert map_role(detections, persons) == (1.0, {"hold": 1.0})
    assert map_role(detections, persons, scenario=2) == (1.0, {"hold": 1.0})


def test_a_duplicate_beside_a_second_person_is_a_false_positive():
    # P1 and P2 both look at the TV; P1 and P2 overlap 7 x 20 = 140 / (400 - 140) = 0.54.
    # The duplicate DUP overlaps P1 by 9 x 20 = 180 / (400 - 180) = 0.82 and P2 by 8 x 20 = 160 / 240 = 0.67.
    # vsrl_eval: DUP goes to P1, its best overlap. P1 is already covered by the 0.9 detection, so DUP is a FP:
    # TP, FP over npos 2 -> precision 1, 1/2 at recall 1/2, 1/2 -> AP = 1/2 * 1 = 0.5.
    # The old rule took the best *unmatched* person, P2 (0.67 >= 0.5, TV right): TP, TP -> AP 1.
    p2, dup = (3, 0, 12, 19), (1, 0, 10, 19)
    assert overlaps([P1, p2], dup) == pytest.approx([180 / 220, 160 / 240])
    persons = [Person("1", P1, {"look": TV}), Person("1", p2, {"look": TV})]
    detections = [Triplet("1", "look", P1, TV, 0.9), Triplet("1", "look", dup, TV, 0.8)]
    assert role_ap(detections, persons, "look") == pytest.approx(0.5)
    # Without the 0.9 detection, P1 is free and DUP is its TP: recall 1/2 at precision 1 -> 0.5 (a FP would be 0).
    assert role_ap(detections[1:], persons, "look") == pytest.approx(0.5)


def test_every_person_takes_the_detections_it_overlaps_most():
    # An idle person at P1, and P2 (overlap 0.54 with P1) who holds the cup. A detection at P1 goes to the idle
    # person (overlap 1), who does not hold: FP, even though P2 is within 0.5 -> AP 0.
    # The same with P1 ignored (no action annotations): the detection is left out, neither TP nor FP -> AP 0
    # with nothing counted, and a later TP on P2 gives AP 1 (it would be 0.5 if the first counted as a FP).
    p2, on_p1 = (3, 0, 12, 19), Triplet("1", "hold", P1, CUP, 0.9)
    assert role_ap([on_p1], [Person("1", P1), Person("1", p2, {"hold": CUP})], "hold") == 0.0
    ignored = [Person("1", P1, ignore=True), Person("1", (50, 0, 59, 19), {"hold": CUP})]
    assert role_ap([on_p1, Triplet("1", "hold", (50, 0, 59, 19), CUP, 0.8)], ignored, "hold") == 1.0


def test_a_wrong_object_box_is_a_false_positive():
    # FP (object IoU 1/3) at 0.9, then TP at 0.8; npos 1 -> precision 0, 1/2 at recall 0, 1 -> AP = 1 * 1/2.
    persons = [Person("1", P1, {"hold": CUP})]
    detections = [Triplet("1", "hold", P1, WRONG_CUP, 0.9), Triplet("1", "hold", P1, CUP, 0.8)]
    assert overlaps([CUP], WRONG_CUP)[0] == pytest.approx(1 / 3)
    assert role_ap(detections, persons, "hold") == pytest.approx(0.5)


def test_a_role_without_object_in_scenario_1_and_2():
    # P1 kicks a ball that is out of frame. Detections: with a ball box at 0.9, without an object at 0.8.
    # Scenario 1: only the detection without object matches: FP, TP -> AP 1 * 1/2 = 0.5.
    # Scenario 2: any object matches: TP (covers P1), then FP (covered) -> recall 1 at precision 1 -> AP 1.
    persons = [Person("1", P1, {"kick": None})]
    detections = [Triplet("1", "kick", P1, BALL, 0.9), Triplet("1", "kick", P1, None, 0.8)]
    assert role_ap(detections, persons, "kick", scenario=1) == pytest.approx(0.5)
    assert role_ap(detections, persons, "kick", scenario=2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="scenario"):
        role_ap(detections, persons, "kick", scenario=3)


def test_npos_counts_a_person_whose_role_object_is_absent():
    # Ingest keeps the role-less triplet (object_id -1): P1 holds the cup, the person at box 2 holds something out
    # of frame. One right detection, recall 1/2 at precision 1 -> AP 0.5. With the triplet dropped, as before,
    # npos would be 1 and AP 1.
    entry = {"file_name": "a.jpg", "annotations": [{"bbox": list(P1), "category_id": 1},
                                                   {"bbox": list(CUP), "category_id": 47},
                                                   {"bbox": [50, 0, 59, 19], "category_id": 1}],
             "hoi_annotation": [{"subject_id": 0, "object_id": 1, "category_id": 2},
                                {"subject_id": 2, "object_id": -1, "category_id": 2}]}
    parsed = parse_entry(entry, {}, {"2": "hold"})
    assert parsed["hoi_objects"] == [1, -1] and parsed["hoi_verbs"] == ["hold", "hold"]
    assert parsed["boxes"].shape == (3, 4)  # stored with their shape, (K, 4)
    boxes = parsed["boxes"].tolist()
    persons = image_persons("1", boxes, zip(parsed["hoi_subjects"], parsed["hoi_objects"], parsed["hoi_verbs"]))
    assert [p.roles for p in persons] == [{"hold": CUP}, {"hold": None}]
    assert role_ap([Triplet("1", "hold", P1, CUP, 0.9)], persons, "hold") == pytest.approx(0.5)
    assert isinstance(parse_entry({**entry, "hoi_annotation": [{"subject_id": 0, "object_id": -2,
                                                                "category_id": 2}]}, {}, {}), str)


def test_detections_are_sorted_by_score_across_images():
    # Images 1 and 2 each have P1 holding the cup. Given image by image: (1) TP 0.5; (2) FP 0.9, TP 0.7.
    # Sorted over both images: FP .9, TP .7, TP .5 -> precision 0, 1/2, 2/3 at recall 0, 1/2, 1
    # -> envelope 2/3 for both recall steps -> AP = 1/2 * 2/3 + 1/2 * 2/3 = 2/3.
    # (In image order, TP, FP, TP, it would be 1/2 * 1 + 1/2 * 2/3 = 5/6.)
    persons = [Person("1", P1, {"hold": CUP}), Person("2", P1, {"hold": CUP})]
    detections = [Triplet("1", "hold", P1, CUP, 0.5), Triplet("2", "hold", P1, WRONG_CUP, 0.9),
                  Triplet("2", "hold", P1, CUP, 0.7)]
    assert role_ap(detections, persons, "hold") == pytest.approx(2 / 3)


def test_no_detections_score_zero_and_a_verb_without_ground_truth_is_not_measured():
    persons = [Person("1", P1, {"hold": CUP})]
    assert map_role([], persons) == (0.0, {"hold": 0.0})
    # "run": detected but no person runs -> NaN (not measured), left out of the mean; no ground truth at all -> NaN.
    mean, per_verb = map_role([Triplet("1", "hold", P1, CUP, 0.9), Triplet("1", "run", P1, None, 0.9)], persons)
    assert mean == 1.0 and per_verb["hold"] == 1.0 and math.isnan(per_verb["run"])
    mean, per_verb = map_role([Triplet("1", "run", P1, None, 0.9)], [])
    assert math.isnan(mean) and math.isnan(per_verb["run"])


def test_vcoco_result_records_round_trip():
    # Images 1 and 2 from the cases above: duplicates beside a second person, a wrong object, a role without
    # object and a NaN score (skipped both ways).
    p2, dup = (3, 0, 12, 19), (1, 0, 10, 19)
    persons = [Person("1", P1, {"look_obj": TV, "kick_obj": None}), Person("1", p2, {"look_obj": TV}),
               Person("2", P1, {"eat_instr": CUP})]
    detections = [Triplet("1", "look_obj", P1, TV, 0.9), Triplet("1", "look_obj", dup, TV, 0.8),
                  Triplet("1", "kick_obj", P1, BALL, 0.7), Triplet("1", "kick_obj", P1, None, 0.6),
                  Triplet("2", "eat_instr", P1, WRONG_CUP, 0.95), Triplet("2", "eat_instr", P1, CUP, 0.5),
                  Triplet("2", "look_obj", P1, TV, math.nan)]
    records = pickle.loads(pickle.dumps(to_vcoco(detections, verbs=["ride_instr"])))
    # image 1: P1 has two kick_obj detections -> two records, DUP one; image 2: two eat_instr -> two records.
    assert [(r["image_id"], r["person_box"]) for r in records] == [(1, list(P1)), (1, list(P1)), (1, list(dup)),
                                                                  (2, list(P1)), (2, list(P1))]
    first = records[0]
    assert set(first) == {"image_id", "person_box", "look_obj", "kick_obj", "eat_instr", "ride_instr",
                          "look_agent", "kick_agent", "eat_agent", "ride_agent"}
    assert first["look_obj"] == [*TV, 0.9] and first["kick_obj"] == [*BALL, 0.7]
    assert first["look_agent"] == 0.9 and math.isnan(first["ride_instr"][4]) and math.isnan(first["eat_agent"])
    assert all(math.isnan(v) for v in records[1]["kick_obj"][:4]) and math.isnan(records[1]["kick_agent"])
    back = from_vcoco(records)
    assert len(back) == 6  # the NaN score is no detection
    for scenario in (1, 2):
        assert map_role(back, persons, scenario) == map_role(detections, persons, scenario)
    # look_obj: TP, FP (0.5); kick_obj: 0.5 / 1 by scenario; eat_instr: FP, TP (0.5)
    assert map_role(back, persons)[1] == pytest.approx({"look_obj": 0.5, "kick_obj": 0.5, "eat_instr": 0.5})
    assert map_role(back, persons, 2)[1]["kick_obj"] == 1.0
    zero_box = [{"image_id": 1, "person_box": list(P1), "kick_obj": [0, 0, 0, 0, 0.4], "kick_agent": 0.4}]
    assert from_vcoco(zero_box) == [Triplet("1", "kick_obj", P1, None, 0.4)]


def test_hico_det_result_records_round_trip():
    # Two triplets share the person box and one shares the cup: each box is listed once per image, with the
    # person's category id; the role without object has no HICO-DET form.
    detections = [Triplet("7", "hold", P1, CUP, 0.9, "cup"), Triplet("7", "drink_with", P1, CUP, 0.6, "cup"),
                  Triplet("7", "look", P1, TV, 0.4, "tv"), Triplet("7", "run", P1, None, 0.8),
                  Triplet("8", "hold", P1, WRONG_CUP, 0.3, "cup")]
    object_ids, verb_ids = {"cup": 47, "tv": 72}, {"hold": 37, "drink_with": 24, "look": 59, "run": 80}
    records = json.loads(json.dumps(to_hico_det(detections, object_ids, verb_ids)))
    assert records[0] == {
        "image_id": "7",
        "predictions": [{"bbox": list(P1), "category_id": 1}, {"bbox": list(CUP), "category_id": 47},
                        {"bbox": list(TV), "category_id": 72}],
        "hoi_prediction": [{"subject_id": 0, "object_id": 1, "category_id": 37, "score": 0.9},
                           {"subject_id": 0, "object_id": 1, "category_id": 24, "score": 0.6},
                           {"subject_id": 0, "object_id": 2, "category_id": 59, "score": 0.4}]}
    assert [len(r["predictions"]) for r in records] == [3, 2]
    names = ({v: k for k, v in object_ids.items()}, {v: k for k, v in verb_ids.items()})
    assert from_hico_det(records, *names) == [d for d in detections if d.object is not None]
    with pytest.raises(ValueError, match="'sofa' has no HICO-DET id"):
        to_hico_det([Triplet("1", "hold", P1, CUP, 0.9, "sofa")], object_ids, verb_ids)
