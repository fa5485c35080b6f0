"""C-HOI: the relation module, the tiny cascade, the annotations pipeline (mAP_role: test_c_hoi_evaluation.py)."""

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


def test_relation_module_learns_verbs_and_ranks_annotated_pairs_first(one_thread):
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
    masks = pair_masks(torch.cat([boxes[:, :2], boxes[:, :2] + 5], 1), torch.cat([boxes[:, 2:], boxes[:, 2:] + 5], 1),
                       size=16)
    module = RelationModule(verbs, cooccurrence(object_labels[annotated], targets[annotated], 4), channels,
                            geometry_size=16)
    optimizer = torch.optim.Adam(module.parameters(), 1e-3)
    first = None
    for _ in range(150):
        out = module(torch.cat([human, obj, union], 1), masks, object_labels)
        loss = RelationModule.loss(out, targets, annotated)
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < first / 5
    out = module(torch.cat([human, obj, union], 1), masks, object_labels)
    scores = RelationModule.scores(out)
    expected = (torch.sigmoid(out["visual"]) + torch.sigmoid(out["geometric"])) * torch.sigmoid(out["semantic"])
    assert torch.equal(scores, expected)
    positives = scores[annotated].gather(1, (object_labels[annotated] % verbs)[:, None])
    assert (positives[:, 0] > scores[annotated].topk(2, 1).values[:, 1] - 1e-6).all()  # its verb scores highest
    top = RelationModule.top_pairs(out["rank"], k=16)
    assert annotated[top].all()  # the 16 annotated pairs rank first


@pytest.fixture
def one_thread():
    """The tiny recognizer's tensors are small: on a shared 2-core machine, two threads fighting are ~10x
    slower than one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _recognize(model, scenes) -> dict[str, float]:
    """map_role and per-verb APs of `model` on the procedural scenes (CHOITask.evaluate on their answers)."""
    from tasks.training.c_hoi import CHOITask

    model.eval()
    return CHOITask().evaluate(model, {"images": [image for image, _, _ in scenes],
                                       "targets": [target for _, target, _ in scenes],
                                       "triplets": [[triplet] for _, _, triplet in scenes]})


def test_tiny_cascade_recognizer_finds_the_triplets_it_was_trained_on(one_thread):
    """Four scenes (person holds a cup / kicks a ball, known boxes), 60 joint steps from scratch: the model
    must find every person and object (IoU >= 0.5, right class) and give the right verb its highest score.
    An untrained model scores map_role ~0 on the same images; a model that detects nothing scores 0."""
    import torch
    from torchvision.ops import box_iou

    from models.c_hoi.model import CascadeHOI, CHOIConfig
    from support.hoi_scenes import OBJECTS, VERBS, hoi_scene

    torch.manual_seed(0)
    scenes = [hoi_scene(index) for index in range(4)]
    table = [[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]  # cups are held, balls kicked (X_s)
    model = CascadeHOI(CHOIConfig.tiny(OBJECTS, VERBS, semantic_table=table))
    assert _recognize(model, scenes)["map_role"] < 0.1  # untrained: the bar below is not a given
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)
    images, targets = [image for image, _, _ in scenes], [target for _, target, _ in scenes]
    for _ in range(60):
        loss = sum(model(images, targets).values())  # 3 stages: localization + relation losses, weighted
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    metrics = _recognize(model, scenes)
    assert metrics["map_role"] > 0.9 and metrics["ap_role_hold"] > 0.9 and metrics["ap_role_kick"] > 0.9
    with torch.no_grad():
        results = model(images)
    for (image, target, (_, _, verb)), result in zip(scenes, results):
        assert len(result["boxes"]) and (result["scores"] >= 0.3).all()
        overlap = box_iou(target["boxes"], result["boxes"])  # (2 ground truths, detections)
        found = (overlap >= 0.5) & (target["labels"][:, None] == result["labels"][None])
        assert found.any(1).all()  # the person and the object, each with its class
        triplet_scores = result["verb_scores"] * result["scores"][result["pairs"]].prod(1, keepdim=True)
        best = int(triplet_scores.max(1).values.argmax())  # as evaluated: verb x human x object score
        human, obj = result["pairs"][best].tolist()
        assert found[0, human] and found[1, obj]  # the best triplet is on the true pair
        assert VERBS[int(triplet_scores[best].argmax())] == verb  # with the true verb


def test_two_phase_training_leaves_the_relation_losses_out_of_the_first_phase():
    import torch

    from models.c_hoi.model import CascadeHOI, CHOIConfig
    from support.hoi_scenes import OBJECTS, VERBS, hoi_scene

    image, target, _ = hoi_scene(0)
    model = CascadeHOI(CHOIConfig.tiny(OBJECTS, VERBS))
    localization = model([image], [target], relations=False)
    joint = model([image], [target])
    assert not any("relation" in name for name in localization)
    assert {f"stage{i}_relation" for i in range(3)} <= set(joint) and set(localization) < set(joint)
    sum(localization.values()).backward()
    assert all(p.grad is None for p in model.relations.parameters())  # the first phase leaves RRM/RCM alone
    assert torch.isfinite(sum(joint.values()))


def test_hoi_annotations_become_a_dataset_and_train_the_recognizer(tmp_path, local_store_env, one_thread):
    import json

    import torch
    from PIL import Image

    from hoi_factory.config import ExecutionConfig
    from hoi_factory.run import run_pipeline
    from hoi_factory.training import TrainConfig, train
    from models.c_hoi.evaluation import from_hico_det, from_vcoco
    from models.c_hoi.model import CascadeHOI
    from support.hoi_scenes import hoi_scene
    from tasks.c_hoi.annotations import HOIAnnotationsConfig, HOIAnnotationsPipeline
    from tasks.training.c_hoi import CHOITask

    (tmp_path / "images" / "a-folder").mkdir(parents=True)
    scenes = []  # the procedural scenes (tests/support/hoi_scenes.py) as V-COCO-style entries
    for index in range(4):
        image, target, (_, _, verb) = hoi_scene(index)
        pixels = (image.permute(1, 2, 0) * 255).round().byte().numpy()
        Image.fromarray(pixels).save(tmp_path / "images" / f"{index}.png")
        category = {1: 1, 2: 47, 3: 37}  # person, cup, ball: hoi_scenes' labels -> objects.json's ids
        scenes.append({"file_name": f"{index}.png",
                       "annotations": [{"bbox": box, "category_id": category[int(label)]}
                                       for box, label in zip(target["boxes"].tolist(), target["labels"])],
                       "hoi_annotation": [{"subject_id": 0, "object_id": 1,
                                           "category_id": {"hold": 2, "kick": 7}[verb]}]})
    scenes[0]["hoi_annotation"].append({"subject_id": 0, "object_id": -1, "category_id": 5})  # a role without object
    good = {key: scenes[0][key] for key in ("annotations", "hoi_annotation")}
    entries = [*scenes,
               {"annotations": [], "hoi_annotation": []},  # no file name
               {"file_name": "0.png", **good, "annotations": [{"bbox": [5, 5, 1, 1], "category_id": 1}]},
               {"file_name": "0.png", **good, "hoi_annotation": [{"subject_id": 7, "object_id": 1, "category_id": 2}]},
               {"file_name": "0.png", **good, "annotations": [{"bbox": [0, 0, 10**400, 5], "category_id": 1}]},
               {"file_name": "../../etc/passwd", **good},
               {"file_name": "", **good},
               "not an entry",
               {"file_name": "a-folder", **good},
               {"file_name": "missing.jpg", **good}]
    (tmp_path / "hoi.json").write_text(json.dumps(entries))
    (tmp_path / "objects.json").write_text(json.dumps({"1": "person", "47": "cup", "37": "ball"}))
    (tmp_path / "verbs.json").write_text(json.dumps({"2": "hold", "5": "stand", "7": "kick"}))
    dataset = run_pipeline(HOIAnnotationsPipeline(), HOIAnnotationsConfig(
        annotations=str(tmp_path / "hoi.json"), images=str(tmp_path / "images"),
        object_names=str(tmp_path / "objects.json"), verb_names=str(tmp_path / "verbs.json"),
        execution=ExecutionConfig(executor="local"))).dataset
    assert dataset.manifest.num_samples == 4 and dataset.manifest.num_errors == 0  # bad entries are rejects
    assert sorted(r["reason"] for r in dataset.rejects().to_pylist()) == sorted([
        "entry without a file_name", "malformed box annotation", "hoi_annotation names a box that does not exist",
        "malformed box annotation", "image path leaves the images folder", "unusable file_name",
        "entry without a file_name", "not a file", "missing file"])
    [row] = [row for row in dataset.to_arrow().to_pylist() if "stand" in row["hoi_verbs"]]
    assert row["labels"] == ["person", "cup"] and [len(box) for box in row["boxes"]] == [4, 4]  # (K, 4), not flat
    assert row["hoi_verbs"] == ["hold", "stand"] and row["hoi_objects"] == [1, -1]  # the role-less one is kept

    version = train(CHOITask(), TrainConfig(datasets=[dataset.ref], model="c-hoi", steps=60, batch_size=4,
                                            learning_rate=2e-3, options={"preset": "tiny"}))
    metrics = version.manifest.metrics  # on the training images; an untrained model scores ~0
    assert metrics["ap_role_hold"] > 0.9 and metrics["ap_role_kick"] > 0.9
    assert metrics["map_role"] > 0.5  # `stand` has no object: no pair trains it, its AP is ~0 (scenario 1)
    # The saved predictions: in both result formats, each image's best triplet is its scene's <hold|kick, object>.
    categories = json.loads(version.read_bytes("predictions/categories.json"))
    verb_names = {number: name for name, number in categories["verbs"].items()}
    for record in json.loads(version.read_bytes("predictions/hico_det.json")):
        best = max(record["hoi_prediction"], key=lambda hoi: hoi["score"])
        _, target, (_, _, verb) = hoi_scene(int(record["image_id"]))
        assert verb_names[best["category_id"]] == verb
        assert record["predictions"][best["object_id"]]["bbox"] == pytest.approx(target["boxes"][1].tolist(), abs=4)
    vcoco = from_vcoco(json.loads(version.read_bytes("predictions/vcoco.json")))
    assert {(d.image_id, d.verb, d.score) for d in vcoco} >= {(d.image_id, d.verb, d.score) for d in from_hico_det(
        json.loads(version.read_bytes("predictions/hico_det.json")),
        {number: name for name, number in categories["objects"].items()}, verb_names)}
    loaded = CascadeHOI.from_pretrained(version.url)
    assert loaded.config.object_classes == ("__background__", "person", "ball", "cup")
    assert loaded.config.verbs == ("hold", "kick", "stand")
    stored = version.load_state_dict()
    assert all(torch.equal(loaded.state_dict()[k], stored[k]) for k in stored)


def test_each_stage_adds_the_previous_stages_visual_features_and_ihsm_starts_as_identity():
    """Eq. 11: stage t's relation module sees its own pair features plus stage t-1's; IHSM (the non-local
    block on the human RoI map) adds a zero-initialised term, so it changes nothing until trained."""
    import torch

    from models.c_hoi.model import CascadeHOI, CHOIConfig
    from support.hoi_scenes import OBJECTS, VERBS, hoi_scene

    torch.manual_seed(0)
    model = CascadeHOI(CHOIConfig.tiny(OBJECTS, VERBS)).eval()
    image, target, _ = hoi_scene(1)
    images, _ = model.transform([image])
    features = model.backbone(images.tensors)
    humans, objects = [target["boxes"][:1]], [target["boxes"][1:]]
    seen = []
    hooks = [relation.register_forward_pre_hook(lambda _, args: seen.append(args[0])) for relation in model.relations]
    with torch.no_grad():
        model._relations(features, images.image_sizes, humans, objects, target["labels"][1:])
        own = [model._pair_features(stage, features, images.image_sizes, humans, objects) for stage in model.stages]
        maps = model.pool(features, humans, images.image_sizes)
        assert torch.equal(model.human_semantics(maps), maps)
        model.human_semantics.out.weight.fill_(0.1)
        assert not torch.allclose(model.human_semantics(maps), maps)
    for hook in hooks:
        hook.remove()
    assert torch.equal(seen[0], own[0])
    assert torch.allclose(seen[1], own[1] + own[0]) and torch.allclose(seen[2], own[2] + own[1])
