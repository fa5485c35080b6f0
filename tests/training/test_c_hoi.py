"""C-HOI: the relation module, the tiny cascade, the annotations pipeline (mAP_role: test_c_hoi_evaluation.py)."""

import numpy as np
import pytest


def test_ranking_loss_is_the_papers_pairwise_hinge():
    import torch

    from models.c_hoi.relation import ranking_loss

    rank = torch.tensor([0.9, 0.6, 0.5, 0.1])
    annotated = torch.tensor([True, False, True, False])
    # (annotated, unannotated): (.9,.6) -> 0, (.9,.1) -> 0, (.5,.6) -> .6-.5+.2 = .3, (.5,.1) -> 0
    assert float(ranking_loss(rank, annotated)) == pytest.approx(0.3)
    assert float(ranking_loss(rank, torch.ones(4, dtype=torch.bool))) == 0.0


def test_pairs_come_from_confident_detections_and_masks_place_both_boxes():
    import torch

    from models.c_hoi.relation import candidate_pairs, pair_masks

    labels, scores = torch.tensor([1, 1, 5, 7]), torch.tensor([0.9, 0.2, 0.8, 0.35])  # person = 1
    assert candidate_pairs(labels, scores, human_label=1).tolist() == [[0, 2], [0, 3]]  # no self pair, no 0.2
    masks = pair_masks(torch.tensor([[0.0, 0, 10, 20]]), torch.tensor([[10.0, 10, 20, 20]]))
    assert masks.shape == (1, 2, 64, 64)
    human, obj = masks[0]
    assert human[:, :31].all() and not human[:, 33:].any()  # left half of the union box
    assert obj[33:, 33:].all() and not obj[:31].any() and not obj[:, :31].any()  # bottom-right quarter


def test_relation_module_learns_verbs_and_ranks_annotated_pairs_first():
    import torch

    from models.c_hoi.relation import RelationModule, cooccurrence, pair_masks

    torch.manual_seed(0)
    pairs, verbs, channels = 24, 3, 16
    object_labels = torch.randint(0, 4, (pairs,))
    targets = torch.zeros(pairs, verbs)
    targets[torch.arange(pairs), object_labels % verbs] = 1  # the verb follows the object category
    annotated = torch.arange(pairs) < 16
    targets[~annotated] = 0
    human, obj, union = (torch.randn(pairs, channels) for _ in range(3))
    human[annotated] += 1.0  # annotated pairs look different
    boxes = torch.rand(pairs, 4) * 10
    masks = pair_masks(torch.cat([boxes[:, :2], boxes[:, :2] + 5], 1), torch.cat([boxes[:, 2:], boxes[:, 2:] + 5], 1))
    module = RelationModule(verbs, cooccurrence(object_labels[annotated], targets[annotated], 4), channels)
    optimizer = torch.optim.Adam(module.parameters(), 1e-3)
    first = None
    for _ in range(150):
        out = module(human, obj, union, masks, object_labels)
        loss = RelationModule.loss(out, targets, annotated)
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss) < first / 5
    out = module(human, obj, union, masks, object_labels)
    scores = RelationModule.scores(out)
    expected = (torch.sigmoid(out["visual"]) + torch.sigmoid(out["geometric"])) * torch.sigmoid(out["semantic"])
    assert torch.equal(scores, expected)
    positives = scores[annotated].gather(1, (object_labels[annotated] % verbs)[:, None])
    assert (positives[:, 0] > scores[annotated].topk(2, 1).values[:, 1] - 1e-6).all()  # its verb scores highest
    top = RelationModule.top_pairs(out["rank"], k=16)
    assert annotated[top].all()  # the 16 annotated pairs rank first


def test_tiny_cascade_recognizer_overfits_a_fixed_batch():
    import torch

    from models.c_hoi.model import CascadeHOI, CHOIConfig

    torch.manual_seed(0)
    model = CascadeHOI(CHOIConfig.tiny(["__background__", "person", "cup", "ball"], ["hold", "kick"]))
    images = [torch.rand(3, 96, 128) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 50, 90], [40, 40, 70, 70]]), "labels": torch.tensor([1, 2]),
                "hoi": torch.tensor([[0, 1, 0]])},
               {"boxes": torch.tensor([[60.0, 5, 120, 90], [10, 60, 40, 90]]), "labels": torch.tensor([1, 3]),
                "hoi": torch.tensor([[0, 1, 1]])}]
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for _ in range(20):
        loss = sum(model(images, targets).values())  # 3 stages: localization + relation losses, weighted
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) / 1.5
    model.eval()
    [result] = model([images[0]])
    assert set(result) == {"boxes", "labels", "scores", "pairs", "verb_scores"}
    assert (result["scores"] >= 0.3).all() and result["verb_scores"].shape[1] == 2


def test_hoi_annotations_become_a_dataset_and_train_the_recognizer(tmp_path, local_store_env):
    import json

    import torch
    from PIL import Image

    from hoi_factory.config import ExecutionConfig
    from hoi_factory.run import run_pipeline
    from hoi_factory.training import TrainConfig, train
    from models.c_hoi.model import CascadeHOI
    from tasks.c_hoi.annotations import HOIAnnotationsConfig, HOIAnnotationsPipeline
    from tasks.training.c_hoi import CHOITask

    (tmp_path / "images" / "a-folder").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (128, 96), "gray").save(tmp_path / "images" / name)
    good = {"annotations": [{"bbox": [10, 10, 50, 90], "category_id": 1},
                            {"bbox": [40, 40, 70, 70], "category_id": 47}],
            "hoi_annotation": [{"subject_id": 0, "object_id": 1, "category_id": 2},
                               {"subject_id": 0, "object_id": -1, "category_id": 5}]}  # a role without object
    entries = [{"file_name": "a.jpg", **good}, {"file_name": "b.jpg", **good},
               {"annotations": [], "hoi_annotation": []},  # no file name
               {"file_name": "a.jpg", **good, "annotations": [{"bbox": [5, 5, 1, 1], "category_id": 1}]},
               {"file_name": "a.jpg", **good, "hoi_annotation": [{"subject_id": 7, "object_id": 1, "category_id": 2}]},
               {"file_name": "a.jpg", **good, "annotations": [{"bbox": [0, 0, 10**400, 5], "category_id": 1}]},
               {"file_name": "../../etc/passwd", **good},
               {"file_name": "", **good},
               "not an entry",
               {"file_name": "a-folder", **good},
               {"file_name": "missing.jpg", **good}]
    (tmp_path / "hoi.json").write_text(json.dumps(entries))
    (tmp_path / "objects.json").write_text(json.dumps({"1": "person", "47": "cup"}))
    (tmp_path / "verbs.json").write_text(json.dumps({"2": "hold", "5": "stand"}))
    dataset = run_pipeline(HOIAnnotationsPipeline(), HOIAnnotationsConfig(
        annotations=str(tmp_path / "hoi.json"), images=str(tmp_path / "images"),
        object_names=str(tmp_path / "objects.json"), verb_names=str(tmp_path / "verbs.json"),
        execution=ExecutionConfig(executor="local"))).dataset
    assert dataset.manifest.num_samples == 2 and dataset.manifest.num_errors == 0  # bad entries are rejects
    assert sorted(r["reason"] for r in dataset.rejects().to_pylist()) == sorted([
        "entry without a file_name", "malformed box annotation", "hoi_annotation names a box that does not exist",
        "malformed box annotation", "image path leaves the images folder", "unusable file_name",
        "entry without a file_name", "not a file", "missing file"])
    row = dataset.to_arrow().to_pylist()[0]
    assert row["labels"] == ["person", "cup"] and len(row["boxes"]) == 8
    assert row["hoi_verbs"] == ["hold", "stand"] and row["hoi_objects"] == [1, -1]  # the role-less one is kept

    version = train(CHOITask(), TrainConfig(datasets=[dataset.ref], model="c-hoi", steps=3, batch_size=2,
                                            options={"preset": "tiny"}))
    metrics = version.manifest.metrics
    assert 0.0 <= metrics["map_role"] <= 1.0 and 0.0 <= metrics["map_role_scenario_2"] <= 1.0
    loaded = CascadeHOI.from_pretrained(version.url)
    assert loaded.config.object_classes == ("__background__", "person", "cup")
    assert loaded.config.verbs == ("hold", "stand")
    stored = version.load_state_dict()
    assert all(torch.equal(loaded.state_dict()[k], stored[k]) for k in stored)
