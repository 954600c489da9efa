"""v2 answers task requests with typed results (boxes, masks, keypoints, semantic maps, text), batched as one at a
time, and `evaluate_shapesworld` scores its v2 tasks with the official metrics' inputs."""

import numpy as np
import pytest
import torch

from visionllm.cli import main
from visionllm.eval.runner import evaluate_shapesworld, inner_point, names_object
from visionllm.formats.keypoints import STAR_KEYPOINT_NAMES
from visionllm.formats.results import Detections, SegmentationMap, TextAnswer
from visionllm.formats.task_table import build_instruction
from visionllm.formats.tasks import Task
from visionllm.models.v2.config import VisionLLMv2Config
from visionllm.models.v2.model import VisionLLMv2


@pytest.fixture
def model(micro_v2):
    torch.manual_seed(0)
    return VisionLLMv2(VisionLLMv2Config.from_dict(micro_v2)).eval()


REQUESTS = [
    build_instruction(Task.DETECTION, classes=["circle", "person"]),
    build_instruction(Task.INSTANCE_SEGMENTATION, classes=["star"]),
    build_instruction(Task.SEMANTIC_SEGMENTATION, classes=["circle", "square", "person"]),
    build_instruction(Task.GROUNDING, expression="the red circle"),
    build_instruction(Task.KEYPOINTS),
    build_instruction(Task.INTERACTIVE_SEGMENTATION, regions="region1 <region>"),
    build_instruction(Task.VQA, question="How many stars are there?"),
    "what is in the picture?",
]
REGIONS = [(), (), (), (), (), [("point", [20.0, 30.0])], (), ()]


def test_every_request_gets_its_typed_result_at_the_image_size(model):
    image = np.random.default_rng(0).integers(0, 255, (50, 80, 3), dtype=np.uint8)
    out = model.predict([image] * len(REQUESTS), REQUESTS, min_score=0.0, regions=REGIONS)
    found = [d.prediction for d in out]
    assert [type(p) for p in found] == [Detections] * 2 + [SegmentationMap] + [Detections] * 3 + [TextAnswer] * 2
    assert set(found[0].class_names) <= {"circle", "person"} and found[0].masks is None
    assert found[1].masks.shape[1:] == (50, 80) and set(found[1].class_names) == {"star"}
    assert found[2].labels.shape == (50, 80) and found[2].labels.max() <= 3
    assert len(found[3]) == 1 and len(found[5]) == 1 and found[5].masks.shape == (1, 50, 80)
    assert found[4].keypoints_xyv_px.shape == (len(found[4]), 17, 3) and len(found[4]) <= 4
    assert (found[0].boxes_xyxy_px[:, [0, 2]] <= 80 + 1e-6).all()


def test_a_keypoint_request_without_instances_answers_none(model):
    image = np.zeros((64, 64, 3), np.uint8)
    found = model.predict([image], [build_instruction(Task.KEYPOINTS)], min_score=1.0)[0].prediction
    assert len(found) == 0 and found.keypoints_xyv_px.shape == (0, 17, 3)


def test_a_mixed_batch_answers_as_one_at_a_time(model):
    images = [np.random.default_rng(k).integers(0, 255, (64, 64, 3), dtype=np.uint8) for k in range(len(REQUESTS))]
    batched = model.predict(images, REQUESTS, min_score=0.0, regions=REGIONS)
    for k, (image, request) in enumerate(zip(images, REQUESTS, strict=True)):
        alone = model.predict([image], [request], min_score=0.0, regions=[REGIONS[k]])[0].prediction
        ours = batched[k].prediction
        if isinstance(ours, Detections):
            assert np.allclose(ours.scores, alone.scores, atol=1e-4) and np.allclose(
                ours.boxes_xyxy_px, alone.boxes_xyxy_px, atol=1e-2
            )
        elif isinstance(ours, TextAnswer):
            assert ours.text == alone.text


def test_the_v2_tasks_are_scored_on_shapesworld(model, tiny_shapesworld):
    tasks = [
        "detection",
        "instance_segmentation",
        "interactive_segmentation",
        "region_caption",
        "semantic_segmentation",
    ]
    metrics = evaluate_shapesworld(model, tiny_shapesworld.root, "val", tasks, limit=2, progress=False)
    for key in ("box_AP", "mask_AP", "interactive_mIoU", "region_caption_accuracy", "semantic_mIoU"):
        assert 0.0 <= metrics[key] <= 1.0, key


def test_a_v1_model_is_not_asked_for_v2_tasks(micro_model, tiny_shapesworld):
    with pytest.raises(ValueError, match="version-1 model does not answer"):
        evaluate_shapesworld(micro_model, tiny_shapesworld.root, "val", ["semantic_segmentation"], limit=1)


def test_the_one_click_prompt_is_the_point_deepest_inside_the_object():
    mask = np.zeros((20, 30), bool)
    mask[2:5, 1:4] = True  # a small blob
    mask[5:18, 10:29] = True  # the body: its centre is deepest
    x, y = inner_point(mask)
    assert mask[int(y), int(x)] and 15 <= x <= 24 and 9 <= y <= 14


@pytest.mark.parametrize(
    ("text", "right"),
    [("a small red circle", True), ("red circles", True), ("a blue circle", False), ("a red circle and a star", False)],
)
def test_a_region_caption_must_name_the_colour_and_the_shape(text, right):
    assert names_object(text, "red", "circle") is right


def test_serve_reads_a_v2_model_s_own_prompt_limit(model, tmp_path, capsys):
    folder = model.save_pretrained(tmp_path / "v2")
    over = model.config.max_prompt_tokens + 1
    assert main(["serve", "--model", str(folder), "--port", "18731", "--max-prompt-tokens", str(over)]) == 2
    assert f"over the model's own limit of {over - 1}" in capsys.readouterr().err


def test_the_one_call_helpers_answer_v2s_tasks(model):
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert isinstance(model.detect(image, ["star"], min_score=0.0), Detections)
    assert model.segment(image, ["star"], min_score=0.0).masks is not None
    star = model.keypoints(image, min_score=0.0, category="star", names=STAR_KEYPOINT_NAMES)
    assert star.keypoints_xyv_px.shape[1:] == (5, 3) and set(star.class_names) <= {"star"}
    assert model.segment_semantic(image, ["circle", "star"]).labels.shape == (64, 64)
    clicked = model.segment_region(image, ("point", [30, 30]))
    assert len(clicked) == 1 and clicked.masks.shape == (1, 64, 64)
    assert isinstance(model.describe_region(image, ("box", [10, 10, 40, 40])), str)
    assert isinstance(model.ask(image, "how many stars are there?"), str) and isinstance(model.caption(image), str)


def test_keypoint_requests_of_two_skeletons_share_a_batch(model):
    image = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    star = build_instruction(Task.KEYPOINTS, classes=["star"], keypoint_names=STAR_KEYPOINT_NAMES)
    person, stars = model.predict([image, image], [build_instruction(Task.KEYPOINTS), star], min_score=0.0)
    assert person.prediction.keypoints_xyv_px.shape[1:] == (17, 3)
    assert stars.prediction.keypoints_xyv_px.shape[1:] == (5, 3) and set(stars.prediction.class_names) <= {"star"}


def test_the_semantic_map_takes_each_pixel_from_a_confident_query_that_covers_it():
    from types import SimpleNamespace

    from visionllm.models.v2.perception import semantic_map

    logits = torch.tensor([[[2.0, -9.0], [-9.0, -1.0], [-9.0, -3.0]]])  # p = 0.88 / 0.27 / 0.05 for their classes
    masks = torch.full((1, 3, 4, 4), -9.0)
    masks[0, 0, :2, :2] = 9.0  # class 0, confident: its pixels
    masks[0, 1, 2:, 2:] = 9.0  # class 1 at 0.27: above the floor, its pixels (the product rule dropped them)
    masks[0, 2, :2, 2:] = 9.0  # class 1 at 0.05: below the floor, background
    output = SimpleNamespace(class_logits=logits, valid=torch.ones(1, 2, dtype=torch.bool), mask_logits=masks)
    labels = semantic_map(output, 0, (16, 16), ["circle", "star"]).labels
    assert labels.shape == (16, 16)
    assert (labels[:6, :6] == 1).all() and (labels[10:, 10:] == 2).all()  # away from the blurred borders
    assert (labels[:6, 10:] == 0).all() and (labels[10:, :6] == 0).all()


def test_chat_places_the_image_when_no_turn_does(model):
    image = np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    placed = model.chat(image, [{"role": "user", "content": "<image> What is this?"}])
    assert model.chat(image, [{"role": "user", "content": "What is this?"}]).text == placed.text


def test_interactive_segmentation_answers_the_candidate_that_covers_the_prompt(model):
    from visionllm.formats.prompts import RegionPrompt, prompt_mask
    from visionllm.models.v2.object_decoder import Detected
    from visionllm.models.v2.perception import prompted

    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[0, :16, :16] = True  # the most confident, top left
    masks[1, 16:, 16:] = True  # bottom right
    masks[2, 16:, 16:28] = True  # bottom right too, less confident
    found = Detected(
        torch.zeros(3, 4), torch.tensor([0.9, 0.5, 0.6]), torch.zeros(3, dtype=torch.long), masks, torch.arange(3)
    )
    click = prompt_mask(RegionPrompt("point", [30, 30]), (32, 32))
    assert prompted(found, click).queries.tolist() == [1]  # the only one under the click
    box = prompt_mask(RegionPrompt("box", [17, 17, 27, 27]), (32, 32))
    assert prompted(found, box).queries.tolist() == [2]  # both cover the box: the more confident
    nowhere = np.zeros((32, 32), bool)
    nowhere[30:, :2] = True
    assert prompted(found, nowhere).queries.tolist() == [0]  # none covers it: the most confident
    empty = found.select(torch.zeros(0, dtype=torch.long))
    assert len(prompted(empty, click).scores) == 0
    image = np.zeros((64, 64, 3), np.uint8)
    answer = model.segment_region(image, RegionPrompt("point", [40, 40]))
    assert len(answer.scores) == 1 and answer.masks.shape == (1, 64, 64)
