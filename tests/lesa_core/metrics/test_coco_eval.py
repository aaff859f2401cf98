"""CocoEvaluator on a generated COCO dataset: perfect, perturbed and partial predictions, DDP gathering."""

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools import mask as mask_utils

from lesa_core.data.coco import CocoInstances
from lesa_core.data.synthetic import write_coco_dataset
from lesa_core.metrics.coco_eval import CocoEvaluator, boxes_xyxy_to_xywh, masks_to_rles

KEYS = {f"coco/{iou_type}_{stat}" for iou_type in ("bbox", "segm")
        for stat in ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco_dataset(tmp_path_factory.mktemp("coco"), num_train=1, num_val=6, image_size=(64, 96), seed=0)


@pytest.fixture(scope="module")
def val_set(coco_root):
    return CocoInstances(coco_root, "val", train=False)


def _ground_truth_predictions(dataset) -> dict[int, dict[str, torch.Tensor]]:
    """Mask R-CNN-shaped predictions equal to the ground truth: masks (N, 1, H, W) as probabilities."""
    predictions = {}
    for index in range(len(dataset)):
        _, target = dataset[index]
        predictions[target["image_id"]] = {
            "boxes": target["boxes"],
            "labels": target["labels"],
            "scores": torch.linspace(1.0, 0.5, len(target["labels"])),
            "masks": target["masks"][:, None].float() * 0.9,
        }
    return predictions


def _evaluate(dataset, predictions, **kwargs) -> dict[str, float]:
    evaluator = CocoEvaluator(dataset.coco, label_to_cat_id=dataset.label_to_cat_id, **kwargs)
    evaluator.update(predictions)
    return evaluator.summarize()


def test_predicting_the_ground_truth_scores_one(val_set):
    metrics = _evaluate(val_set, _ground_truth_predictions(val_set))
    assert set(metrics) == KEYS
    assert metrics["coco/bbox_mAP"] == pytest.approx(1.0) and metrics["coco/segm_mAP"] == pytest.approx(1.0)
    # each value is a perfect score, or -1.0 where the ground truth has no object of that size
    assert all(value == pytest.approx(1.0) or value == -1.0 for value in metrics.values())
    assert metrics["coco/bbox_mAP_l"] == -1.0  # no object in a 96 px image reaches 96^2 px


def test_shifted_boxes_lower_only_box_ap(val_set):
    predictions = _ground_truth_predictions(val_set)
    for prediction in predictions.values():
        prediction["boxes"] = prediction["boxes"] + torch.tensor([4.0, 3.0, 4.0, 3.0])
    metrics = _evaluate(val_set, predictions)
    assert metrics["coco/bbox_mAP"] < 0.9 and metrics["coco/bbox_mAP_75"] < 1.0
    assert metrics["coco/segm_mAP"] == pytest.approx(1.0)


def test_eroded_masks_lower_only_mask_ap(val_set):
    predictions = _ground_truth_predictions(val_set)
    for prediction in predictions.values():
        prediction["masks"] = -torch.nn.functional.max_pool2d(-prediction["masks"], 5, stride=1, padding=2)
    metrics = _evaluate(val_set, predictions)
    assert metrics["coco/segm_mAP"] < 0.9
    assert metrics["coco/bbox_mAP"] == pytest.approx(1.0)


def test_wrong_labels_score_zero(val_set):
    predictions = _ground_truth_predictions(val_set)
    for prediction in predictions.values():
        prediction["labels"] = prediction["labels"] % 3 + 1
    metrics = _evaluate(val_set, predictions)
    assert metrics["coco/bbox_mAP"] == 0.0 and metrics["coco/segm_mAP"] == 0.0


def test_only_updated_images_are_evaluated_and_the_last_update_wins(val_set):
    predictions = _ground_truth_predictions(val_set)
    image_ids = sorted(predictions)
    evaluator = CocoEvaluator(val_set.coco, ("bbox",), label_to_cat_id=val_set.label_to_cat_id)
    wrong = {**predictions[image_ids[0]], "labels": predictions[image_ids[0]]["labels"] % 3 + 1}
    evaluator.update({image_ids[0]: wrong})
    evaluator.update({image_id: predictions[image_id] for image_id in image_ids[:3]})
    metrics = evaluator.summarize()
    assert set(metrics) == {key for key in KEYS if key.startswith("coco/bbox")}
    assert metrics["coco/bbox_mAP"] == pytest.approx(1.0)


def test_no_detections_score_zero(val_set):
    height, width = val_set.coco.imgs[val_set.image_ids[0]]["height"], val_set.coco.imgs[val_set.image_ids[0]]["width"]
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
             "masks": torch.zeros(0, 1, height, width)}
    metrics = _evaluate(val_set, {val_set.image_ids[0]: empty})
    assert metrics["coco/bbox_mAP"] == 0.0 and metrics["coco/segm_mAP"] == 0.0


def test_bad_predictions_are_rejected_with_the_image_named(val_set):
    predictions = _ground_truth_predictions(val_set)
    image_id = val_set.image_ids[0]
    evaluator = CocoEvaluator(val_set.coco, label_to_cat_id=val_set.label_to_cat_id)
    with pytest.raises(ValueError, match="no predictions were added"):
        evaluator.summarize()
    with pytest.raises(ValueError, match=rf"image {image_id}: predicted labels \[7\]"):
        unknown_labels = torch.full_like(predictions[image_id]["labels"], 7)
        evaluator.update({image_id: {**predictions[image_id], "labels": unknown_labels}})
    small_masks = predictions[image_id]["masks"][..., :-1, :]
    with pytest.raises(ValueError, match=rf"image {image_id}: masks are .*original image size"):
        evaluator.update({image_id: {**predictions[image_id], "masks": small_masks}})
    with pytest.raises(ValueError, match="image id 12345 is not in the ground truth"):
        evaluator.update({12345: predictions[image_id]})
    with pytest.raises(ValueError, match="iou_types"):
        CocoEvaluator(val_set.coco, ("keypoints",), label_to_cat_id=val_set.label_to_cat_id)


def test_box_and_mask_conversions():
    boxes = torch.tensor([[1.0, 2.0, 4.0, 8.0], [0.5, 0.0, 10.0, 3.5]])
    assert boxes_xyxy_to_xywh(boxes).tolist() == [[1.0, 2.0, 3.0, 6.0], [0.5, 0.0, 9.5, 3.5]]
    probabilities = torch.rand(3, 1, 7, 9, generator=torch.Generator().manual_seed(0))
    probabilities[0, 0, 0, 0] = 0.5  # exactly the threshold: background
    rles = masks_to_rles(probabilities)
    assert all(isinstance(rle["counts"], str) for rle in rles)
    json.dumps(rles)
    decoded = np.stack([mask_utils.decode(rle) for rle in rles])
    np.testing.assert_array_equal(decoded, (probabilities[:, 0] > 0.5).numpy())
    assert masks_to_rles(torch.zeros(0, 1, 7, 9)) == []


def _gather_worker(rank: int, world_size: int, init_file: str, root: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        dataset = CocoInstances(root, "val", train=False)
        predictions = _ground_truth_predictions(dataset)
        image_ids = sorted(predictions)
        # rank 1's boxes are off, so a rank evaluating only its own images would not see the merged score;
        # both ranks also hold image_ids[0] (DistributedSampler padding), with the same predictions
        mine = [*image_ids[rank::world_size], image_ids[0]]
        if rank == 1:
            for image_id in mine[:-1]:
                predictions[image_id]["boxes"] = predictions[image_id]["boxes"] + 5.0
        evaluator = CocoEvaluator(dataset.coco, label_to_cat_id=dataset.label_to_cat_id)
        evaluator.update({image_id: predictions[image_id] for image_id in mine})
        evaluator.synchronize_between_processes()
        with open(f"{out_dir}/rank{rank}.json", "w") as out:
            json.dump({"images": sorted(evaluator.results), "metrics": evaluator.summarize()}, out)
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_gather_every_result_and_agree(val_set, coco_root, tmp_path):
    # fork: the ranks start in a moment instead of importing torch again
    mp.start_processes(_gather_worker, args=(2, str(tmp_path / "init"), str(coco_root), str(tmp_path)), nprocs=2,
                       start_method="fork")
    rank_outputs = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]

    predictions = _ground_truth_predictions(val_set)
    for image_id in sorted(predictions)[1::2]:
        predictions[image_id]["boxes"] = predictions[image_id]["boxes"] + 5.0
    expected = _evaluate(val_set, predictions)
    assert expected["coco/bbox_mAP"] < 1.0
    for output in rank_outputs:
        assert output["images"] == sorted(val_set.image_ids)
        assert output["metrics"] == pytest.approx(expected)
