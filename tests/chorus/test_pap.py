"""PAP against hand computations (the official `projective_average_precision` worked by hand on small images),
against a literal transcription of the official loop on random fields, and the projections that feed it."""

import math

import numpy as np
import pytest

from models.chorus.pap import (
    THRESHOLDS,
    ImageAP,
    eval_size,
    image_ap,
    mean_pap,
    project_max,
    project_region,
)

NO_HUMAN = np.zeros((1, 4), dtype=bool)


def test_thresholds_are_the_papers_99_levels():
    assert len(THRESHOLDS) == 99 and THRESHOLDS[0] == 0.01 and THRESHOLDS[-1] == 0.99


def test_a_uniform_field_scores_the_targets_share_of_the_image_and_nothing_when_strict():
    # 0.5 everywhere, target = 1 pixel of 4: levels <= 0.50 predict all (P 1/4, R 1), levels >= 0.51 predict
    # nothing (R 0). One step of width 1 at the best earlier precision 1/4; strict: that step goes into emptiness.
    result = image_ap(np.full((1, 4), 0.5), np.array([[1, 0, 0, 0]], dtype=bool), NO_HUMAN)
    assert (result.ap, result.ap_strict) == (pytest.approx(0.25), 0.0)


def test_a_perfect_binary_field_scores_zero_as_in_the_official_code():
    # every level predicts exactly the target: recall never steps down, so no area accumulates
    target = np.array([[1, 1, 0, 0]], dtype=bool)
    result = image_ap(target.astype(float), target, NO_HUMAN)
    assert (result.ap, result.ap_strict) == (0.0, 0.0)


def test_a_graded_field_by_hand():
    # scores 0.9, 0.6, 0.3, 0.1 against target 1, 0, 1, 0:
    #   0.01-0.10: all 4 (P 1/2, R 1);  0.11-0.30: 3 (P 2/3, R 1);  0.31-0.60: 2 (P 1/2, R 1/2);
    #   0.61-0.90: 1 (P 1, R 1/2);  0.91-0.99: none (P 0, R 0)
    # steps: at 0.31 width 1/2 x max(1/2, 2/3) = 1/3; at 0.91 width 1/2 x max(.., 1) = 1/2 (strict: empty, 0)
    result = image_ap(np.array([[0.9, 0.6, 0.3, 0.1]]), np.array([[1, 0, 1, 0]], dtype=bool), NO_HUMAN)
    assert result.ap == pytest.approx(1 / 3 + 1 / 2)
    assert result.ap_strict == pytest.approx(1 / 3)


def test_an_empty_prediction_scores_zero():
    result = image_ap(np.zeros((1, 4)), np.array([[1, 1, 0, 0]], dtype=bool), NO_HUMAN)
    assert (result.ap, result.ap_strict, result.target_area) == (0.0, 0.0, 2)


def test_a_human_region_that_hides_part_of_the_object():
    # the same graded field; the human covers the target pixel scored 0.3. Outside it: target = {0.9 pixel};
    #   0.01-0.10: {0.9, 0.6, 0.1} (P 1/3, R 1);  0.11-0.60: {0.9, 0.6} (P 1/2, R 1);  0.61-0.90: {0.9} (P 1, R 1);
    #   0.91-0.99: none (R 0): one step of width 1 at the best earlier precision 1; strict 0.
    human = np.array([[0, 0, 1, 0]], dtype=bool)
    result = image_ap(np.array([[0.9, 0.6, 0.3, 0.1]]), np.array([[1, 0, 1, 0]], dtype=bool), human)
    assert (result.ap_occlusion_aware, result.ap_strict_occlusion_aware) == (pytest.approx(1.0), 0.0)
    assert (result.target_area, result.target_area_occlusion_aware) == (2, 1)
    assert result.ap == pytest.approx(1 / 3 + 1 / 2)  # the plain variants ignore the human


def official_loop(scores, target, human):
    """The official `compute_pap` transcribed literally: a list of (threshold, P, R, areas), then the loop."""
    def pap(rows):
        total, strict = 0.0, 0.0
        best, recall_before = rows[0][1], rows[0][2]
        for _, precision, recall, area, _ in rows[1:]:
            width = recall_before - recall
            total += width * best
            strict += width * best if area > 0 else 0.0
            best = max(best, precision)
            recall_before = recall
        return total, strict

    plain, hoa = [], []
    for threshold in THRESHOLDS:
        pred = scores >= threshold
        pred_h, target_h = np.logical_and(pred, 1 - human), np.logical_and(target, 1 - human)
        for rows, p, t in ((plain, pred, target), (hoa, pred_h, target_h)):
            hits = np.logical_and(t, p).sum()
            rows.append((threshold, hits / max(1, p.sum()), hits / max(1, t.sum()), p.sum(), t.sum()))
    return (*pap(plain), *pap(hoa))


def test_agrees_with_the_official_loop_on_random_fields():
    rng = np.random.default_rng(7)
    for trial in range(20):
        scores = rng.random((9, 11)) ** (1 + trial % 3) * (trial % 4 != 0)  # some all-zero fields
        target = rng.random((9, 11)) < 0.3
        human = rng.random((9, 11)) < 0.2
        result = image_ap(scores, target, human)
        expected = official_loop(scores, target, human.astype(int))
        got = (result.ap, result.ap_strict, result.ap_occlusion_aware, result.ap_strict_occlusion_aware)
        assert got == pytest.approx(expected, abs=1e-12)


def test_the_mean_skips_images_whose_target_is_empty_and_says_how_many_it_covers():
    images = [ImageAP(0.5, 0.4, 0.3, 0.2, 10, 5), ImageAP(0.9, 0.9, 0.9, 0.9, 0, 0),  # empty target: skipped
              ImageAP(0.1, 0.0, 0.7, 0.6, 8, 0)]  # target wholly behind the human: skipped by the hoa means
    means = mean_pap(images)
    assert means["pap"] == pytest.approx(0.3) and means["pap_strict"] == pytest.approx(0.2)
    assert means["pap_occlusion_aware"] == pytest.approx(0.3) and means["pap_strict_occlusion_aware"] == 0.2
    assert (means["num_images"], means["num_images_occlusion_aware"]) == (2, 1)
    nothing = mean_pap([ImageAP(1, 1, 1, 1, 0, 0)])
    assert math.isnan(nothing["pap"]) and nothing["num_images"] == 0  # not measured, never a made-up 0


def test_project_max_keeps_the_largest_value_per_pixel_and_project_region_marks_hits():
    K = np.array([[10.0, 0, 2], [0, 10.0, 2], [0, 0, 1]])
    points = np.array([[0, 0, 5.0], [0, 0, 6.0], [0.9, 0.9, 5.0], [0, 0, -1.0]])
    image = project_max(points, np.array([0.2, 0.7, 0.4, 1.0]), K, np.eye(3), np.zeros(3), 4, 4)
    assert image[2, 2] == pytest.approx(0.7)  # two points, the larger wins; the one behind is ignored
    assert image[3, 3] == pytest.approx(0.4)
    assert image.sum() == pytest.approx(1.1)
    region = project_region(points, K, np.eye(3), np.zeros(3), 4, 4)
    assert region.sum() == 2 and region[2, 2] and region[3, 3]


def test_eval_size_is_the_official_short_side_32_with_the_long_side_truncated():
    assert eval_size(640, 427) == (47, 32, 32 / 427)  # int(640 * 32 / 427) = int(47.96)
    assert eval_size(480, 640) == (32, 42, 32 / 480)
    assert eval_size(256, 256) == (32, 32, 0.125)
