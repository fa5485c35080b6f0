"""PAP against hand computations, and the projection that feeds it."""

import numpy as np
import pytest

from models.chorus.pap import THRESHOLDS, average_precision, image_ap, precision_recall, project_max


def test_thresholds_are_the_papers_99_levels():
    assert len(THRESHOLDS) == 99 and THRESHOLDS[0] == 0.01 and THRESHOLDS[-1] == 0.99


def test_ap_by_hand_four_pixels():
    # scores 0.9, 0.6, 0.3, 0.0 against truth 1, 0, 1, 0:
    #   levels <= 0.3: 3 predicted, 2 right: P 2/3, R 1
    #   levels in (0.3, 0.6]: P 1/2, R 1/2;  (0.6, 0.9]: P 1, R 1/2;  above 0.9 and the sentinel: empty, R 0
    # AP = (1 - 1/2) * max(2/3, 1/2) + (1/2 - 0) * max(2/3, 1/2, 1, empty) = 1/3 + 1/2
    scores, truth = np.array([0.9, 0.6, 0.3, 0.0]), np.array([1, 0, 1, 0], dtype=bool)
    result = image_ap(scores, truth)
    assert result["ap"] == pytest.approx(1 / 3 + 1 / 2)
    assert result["ap_strict"] == pytest.approx(1 / 3 + 1 / 2)


def test_strict_counts_an_empty_prediction_as_zero():
    # All three positives at 0.5: at levels <= 0.5, P 2/3, R 1; above, nothing is predicted.
    scores, truth = np.array([0.5, 0.5, 0.5, 0.0]), np.array([1, 0, 1, 0], dtype=bool)
    assert image_ap(scores, truth)["ap"] == pytest.approx(1.0)  # vanilla: the empty level has precision 1
    assert image_ap(scores, truth)["ap_strict"] == pytest.approx(2 / 3)


def test_occlusion_aware_ignores_pixels_inside_the_human():
    scores, truth = np.array([0.5, 0.5, 0.5, 0.0]), np.array([1, 0, 1, 0], dtype=bool)
    human = np.array([False, True, False, False])  # the false positive lies on the person
    assert image_ap(scores, truth, human)["ap_occlusion_aware"] == pytest.approx(1.0)
    precision, recall = precision_recall(scores, truth, ignore=human, strict=True)
    assert precision[0] == 1.0 and recall[0] == 1.0


def test_perfect_and_empty_predictions():
    truth = np.array([1, 1, 0, 0], dtype=bool)
    assert average_precision(*precision_recall(truth.astype(float), truth)) == pytest.approx(1.0)
    assert average_precision(*precision_recall(np.zeros(4), truth)) == 0.0


def test_project_max_keeps_the_largest_value_per_pixel():
    K = np.array([[10.0, 0, 2], [0, 10.0, 2], [0, 0, 1]])
    points = np.array([[0, 0, 5.0], [0, 0, 6.0], [0.9, 0.9, 5.0], [0, 0, -1.0]])
    image = project_max(points, np.array([0.2, 0.7, 0.4, 1.0]), K, np.eye(3), np.zeros(3), 4, 4)
    assert image[2, 2] == pytest.approx(0.7)  # two points, the larger wins; the one behind is ignored
    assert image[3, 3] == pytest.approx(0.4)
    assert image.sum() == pytest.approx(1.1)
