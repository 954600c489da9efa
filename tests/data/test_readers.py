"""The public-format readers on fixtures in the datasets' own layouts (tests/fixtures/public)."""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from visionllm.data.readers import (
    DatasetFormatError,
    KeypointSchema,
    load_label_map,
    read_coco_captions,
    read_coco_instances,
    read_coco_keypoint_schema,
    read_coco_keypoints,
    read_llava,
    read_refcoco,
    read_semantic_masks,
    read_vqav2,
)
from visionllm.data.sample import Turn
from visionllm.formats.tasks import Task

INSTANCES = Path("coco/annotations/instances_val2017.json")
KEYPOINTS = Path("coco/annotations/person_keypoints_val2017.json")
CAPTIONS = Path("coco/annotations/captions_val2017.json")
REFS = Path("refcoco/refs(unc).p")
REF_INSTANCES = Path("refcoco/instances.json")
VQA_QUESTIONS = Path("vqav2/v2_OpenEnded_mscoco_val2014_questions.json")
VQA_ANSWERS = Path("vqav2/v2_mscoco_val2014_annotations.json")
LLAVA = Path("llava/llava_instruct_sample.json")
VOC = Path("voc2012")
ADE = Path("ADEChallengeData2016")


def _by_id(samples):
    return {sample.image_id: sample for sample in samples}


# --------------------------------------------------------------------------------------------------------------------
# COCO instances


def test_coco_instances_one_sample_per_image_in_file_order(public, coco_val2017_dir):
    samples = read_coco_instances(public / INSTANCES, coco_val2017_dir)

    assert [s.image_id for s in samples] == [397133, 37777, 252219]
    assert all(s.task is Task.DETECTION and s.source == "coco_instances" for s in samples)
    first = samples[0]
    assert first.image_path == coco_val2017_dir / "000000397133.jpg" and first.image_path.is_file()
    assert (first.width, first.height) == (640, 427)
    assert samples[1].objects == ()  # an image without annotations is still a sample


def test_coco_instances_objects_sorted_by_id_with_xyxy_boxes(public, coco_val2017_dir):
    sample = _by_id(read_coco_instances(public / INSTANCES, coco_val2017_dir))[397133]

    assert [o.ann_id for o in sample.objects] == [1768, 82445, 1039564]  # the file lists 1039564 first
    assert [o.category for o in sample.objects] == ["person", "bottle", "bowl"]
    person = sample.objects[0]
    # bbox [388.66, 69.92, 109.41, 277.62] (x, y, w, h)
    np.testing.assert_allclose(person.box_xyxy_px, (388.66, 69.92, 498.07, 347.54))
    assert person.area == pytest.approx(23780.3163)
    assert person.iscrowd is False and person.rle is None and person.keypoints_xyv is None


def test_coco_instances_polygons_become_p_by_2_arrays(public, coco_val2017_dir):
    sample = _by_id(read_coco_instances(public / INSTANCES, coco_val2017_dir))[397133]
    person, _, bowl = sample.objects

    assert len(person.polygons_xy_px) == 1
    np.testing.assert_allclose(person.polygons_xy_px[0][:2], [[425.0, 69.92], [470.5, 80.2]])
    assert person.polygons_xy_px[0].shape == (6, 2)
    assert [p.shape for p in bowl.polygons_xy_px] == [(4, 2), (3, 2)]  # a mask in two parts
    points = np.concatenate(bowl.polygons_xy_px)  # the box is the polygons' extent
    np.testing.assert_allclose((*points.min(0), *points.max(0)), bowl.box_xyxy_px)


def test_coco_instances_crowd_keeps_uncompressed_rle(public, coco_val2017_dir):
    crowd = _by_id(read_coco_instances(public / INSTANCES, coco_val2017_dir))[252219].objects[-1]

    assert crowd.ann_id == 900100252219 and crowd.iscrowd is True and crowd.polygons_xy_px == ()
    assert crowd.rle == {"size": [428, 640], "counts": [120000, 40, 388, 40, 388, 40, 153024]}
    encoded = mask_utils.frPyObjects(dict(crowd.rle), 428, 640)  # the layout pycocotools decodes
    assert mask_utils.area(encoded) == crowd.area == 120
    np.testing.assert_allclose(crowd.box_xyxy_px, (280, 160, 283, 200))
    np.testing.assert_allclose(mask_utils.toBbox(encoded), [280, 160, 3, 40])


def _rewrite(src: Path, dst_dir: Path, edit: Callable[[Any], Any]) -> Path:
    """A copy of a fixture (JSON, or the refs pickle written out as JSON) after `edit(data)`."""
    data = pickle.loads(src.read_bytes()) if src.suffix == ".p" else json.loads(src.read_text())
    dst = dst_dir / (src.stem + ".json")
    dst.write_text(json.dumps(edit(data)))
    return dst


def test_coco_instances_compressed_rle_kept_as_string(public, tmp_path):
    def compress(data):
        crowd = data["annotations"][-1]
        encoded = mask_utils.frPyObjects(crowd["segmentation"], *crowd["segmentation"]["size"])
        crowd["segmentation"] = {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}
        return data

    crowd = read_coco_instances(_rewrite(public / INSTANCES, tmp_path, compress), tmp_path)[2].objects[-1]

    assert isinstance(crowd.rle["counts"], str)
    assert mask_utils.area({"size": crowd.rle["size"], "counts": crowd.rle["counts"].encode()}) == 120


def test_coco_instances_keep_annotation_attributes(public, tmp_path):
    """ShapesWorld writes its COCO files with an `attributes` object on each annotation."""

    def add_attributes(data):
        data["annotations"][1]["attributes"] = {"color": "red", "size": "small"}
        return data

    person = read_coco_instances(_rewrite(public / INSTANCES, tmp_path, add_attributes), tmp_path)[0].objects[0]

    assert person.ann_id == 1768 and dict(person.attributes) == {"color": "red", "size": "small"}


# --------------------------------------------------------------------------------------------------------------------
# COCO keypoints

COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)  # fmt: skip


def test_coco_keypoint_schema_is_zero_based(public):
    schema = read_coco_keypoint_schema(public / KEYPOINTS)

    assert isinstance(schema, KeypointSchema)
    assert schema.names == COCO_KEYPOINT_NAMES
    assert len(schema.skeleton) == 19
    assert schema.skeleton[0] == (15, 13)  # [16, 14] in the file: left_ankle - left_knee
    assert schema.names[15] == "left_ankle" and schema.names[13] == "left_knee"
    assert all(0 <= i < 17 for limb in schema.skeleton for i in limb)


def test_coco_keypoints_keep_only_annotations_with_keypoints(public, coco_val2017_dir):
    samples = _by_id(read_coco_keypoints(public / KEYPOINTS, coco_val2017_dir))

    assert all(s.task is Task.KEYPOINTS for s in samples.values())
    assert [o.ann_id for o in samples[397133].objects] == [1768]
    # 252219 also has a person with num_keypoints 0 and a crowd: neither is an object.
    assert [o.ann_id for o in samples[252219].objects] == [185281]
    assert samples[37777].objects == ()


def test_coco_keypoints_xyv_and_visibility(public, coco_val2017_dir):
    chef = _by_id(read_coco_keypoints(public / KEYPOINTS, coco_val2017_dir))[397133].objects[0]
    names = read_coco_keypoint_schema(public / KEYPOINTS).names
    xyv = chef.keypoints_xyv

    assert xyv.shape == (17, 3)
    np.testing.assert_array_equal(xyv[names.index("nose")], [440, 95, 2])
    assert xyv[names.index("left_ear"), 2] == 1  # labelled but occluded
    np.testing.assert_array_equal(xyv[names.index("right_ear")], [0, 0, 0])  # not labelled
    assert int((xyv[:, 2] > 0).sum()) == 12  # the file's num_keypoints
    np.testing.assert_allclose(chef.box_xyxy_px, (388.66, 69.92, 498.07, 347.54))
    assert len(chef.polygons_xy_px) == 1


# --------------------------------------------------------------------------------------------------------------------
# COCO captions


def test_coco_captions_grouped_per_image_in_id_order_and_stripped(public, coco_val2017_dir):
    samples = read_coco_captions(public / CAPTIONS, coco_val2017_dir)
    by_id = _by_id(samples)

    assert [s.image_id for s in samples] == [397133, 37777, 252219]
    assert all(s.task is Task.CAPTION and len(s.captions) == 5 for s in samples)
    assert by_id[397133].captions[0] == "A man is in a kitchen making pizzas."
    assert by_id[37777].captions[:2] == (  # ids 2641, 5634: file order differs
        "The dining table near the kitchen has a bowl of fruit on it.",
        "A kitchen that has a bowl of fruit on the table.",  # "... table. " in the file
    )
    assert by_id[252219].captions[-1] == "a man falls off his skateboard in a skate park."  # "...\n" in the file
    assert by_id[397133].image_path == coco_val2017_dir / "000000397133.jpg"


def test_coco_captions_skip_images_without_captions(public, tmp_path, caplog):
    def drop_37777(data):
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 37777]
        return data

    with caplog.at_level(logging.WARNING, logger="visionllm.data.readers"):
        samples = read_coco_captions(_rewrite(public / CAPTIONS, tmp_path, drop_37777), tmp_path)

    assert [s.image_id for s in samples] == [397133, 252219]
    assert "skipped 1 images without captions" in caplog.text


# --------------------------------------------------------------------------------------------------------------------
# RefCOCO


def test_refcoco_one_sample_per_ref_with_sent_strings(public, tmp_path):
    samples = read_refcoco(public / REFS, public / REF_INSTANCES, tmp_path)

    assert [s.objects[0].ann_id for s in samples] == [1719310, 1716571, 467389, 348920]
    assert all(s.task is Task.GROUNDING and s.source == "refcoco" for s in samples)
    lady = samples[0]
    assert lady.expressions == ("the lady with the blue shirt", "lady with back to us", "blue shirt")
    # the image name comes from instances.json, not the ref's file_name (COCO_train2014_000000581857_16.jpg)
    assert lady.image_path == tmp_path / "COCO_train2014_000000581857.jpg"
    assert (lady.image_id, lady.width, lady.height) == (581857, 427, 640)
    assert lady.objects[0].category == "person"
    np.testing.assert_allclose(lady.objects[0].box_xyxy_px, (85.54, 264.0, 238.49, 640.0))
    assert len(lady.objects[0].polygons_xy_px) == 1


@pytest.mark.parametrize(
    ("split", "ann_ids"),
    [
        ("train", [1719310, 1716571]),
        ("testA", [467389]),
        ("testB", [348920]),
        (None, [1719310, 1716571, 467389, 348920]),
    ],
)
def test_refcoco_split_filter(public, tmp_path, split, ann_ids):
    samples = read_refcoco(public / REFS, public / REF_INSTANCES, tmp_path, split=split)

    assert [s.objects[0].ann_id for s in samples] == ann_ids


def test_refcoco_unknown_split_lists_the_splits(public, tmp_path):
    with pytest.raises(ValueError, match=r"no ref is in split 'val'.*\['testA', 'testB', 'train'\]"):
        read_refcoco(public / REFS, public / REF_INSTANCES, tmp_path, split="val")


def test_refcoco_refs_json_reads_like_the_pickle(public, tmp_path):
    refs_json = _rewrite(public / REFS, tmp_path, lambda refs: refs)

    from_json = read_refcoco(refs_json, public / REF_INSTANCES, tmp_path)
    from_pickle = read_refcoco(public / REFS, public / REF_INSTANCES, tmp_path)

    assert refs_json.name == "refs(unc).json"
    assert [(s.expressions, s.objects[0].ann_id) for s in from_json] == [
        (s.expressions, s.objects[0].ann_id) for s in from_pickle
    ]


def test_refcoco_python2_style_pickle_with_builtin_set_loads(public, tmp_path):
    """Protocol-2 pickles name builtins `__builtin__` (as Python 2 wrote them); those few globals are allowed."""
    refs = pickle.loads((public / REFS).read_bytes())
    refs[0]["sent_ids"] = set(refs[0]["sent_ids"])
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(refs, protocol=2))
    assert b"__builtin__" in path.read_bytes()

    assert len(read_refcoco(path, public / REF_INSTANCES, tmp_path)) == 4


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Evaluates:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


@pytest.mark.parametrize(("payload", "refused"), [("os_system", "system"), ("builtins_eval", "eval")])
def test_refcoco_pickle_that_imports_code_is_refused(public, tmp_path, payload, refused):
    marker = tmp_path / "pwned"
    evil = _RunsCommand(f"touch {marker}") if payload == "os_system" else _Evaluates()
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 0, "payload": evil}], protocol=2))

    with pytest.raises(DatasetFormatError, match=rf"refs\(unc\)\.p.*refused to load the global `\w+\.{refused}`"):
        read_refcoco(path, public / REF_INSTANCES, tmp_path)
    assert not marker.exists()


def test_refcoco_truncated_pickle_is_a_format_error(public, tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes((public / REFS).read_bytes()[:100])

    with pytest.raises(DatasetFormatError, match=r"cannot load as a RefCOCO refs file"):
        read_refcoco(path, public / REF_INSTANCES, tmp_path)


# --------------------------------------------------------------------------------------------------------------------
# VQAv2


def test_vqav2_questions_with_their_ten_answers(public, tmp_path):
    samples = read_vqav2(public / VQA_QUESTIONS, public / VQA_ANSWERS, tmp_path)

    assert [s.qa.question_id for s in samples] == [262148000, 262148001, 262148002, 393225000, 393225001, 458752000]
    assert all(s.task is Task.VQA and len(s.qa.answers) == 10 for s in samples)
    where = samples[0]
    assert where.image_id == 262148 and where.qa.question == "Where is he looking?"
    assert where.qa.answers[:3] == ("down", "down", "at table")
    assert (where.qa.answer_type, where.qa.question_type) == ("other", "none of the above")
    assert samples[4].qa.answer_type == "number" and samples[4].qa.answers.count("2") == 8


@pytest.mark.parametrize(
    ("pattern", "expected_name"),
    [
        (None, "COCO_val2014_000000262148.jpg"),  # the default: COCO 2014 names from `data_subtype`
        ("{image_id:012d}.jpg", "000000262148.jpg"),
        ("{subtype}/{image_id}.png", "val2014/262148.png"),
        (lambda image_id: f"img_{image_id}.jpg", "img_262148.jpg"),
    ],
)
def test_vqav2_image_name_pattern(public, tmp_path, pattern, expected_name):
    kwargs = {} if pattern is None else {"image_name_pattern": pattern}

    sample = read_vqav2(public / VQA_QUESTIONS, public / VQA_ANSWERS, tmp_path, **kwargs)[0]

    assert sample.image_path == tmp_path / expected_name


@pytest.mark.parametrize("pattern", ["{id}.jpg", "COCO_val2014.jpg", "{image_id}_{split}.jpg"])
def test_vqav2_bad_pattern(public, tmp_path, pattern):
    with pytest.raises(ValueError, match=r"should use \{image_id\}"):
        read_vqav2(public / VQA_QUESTIONS, None, tmp_path, image_name_pattern=pattern)


def test_vqav2_without_annotations_has_no_answers(public, tmp_path):
    """test-dev ships questions only."""
    samples = read_vqav2(public / VQA_QUESTIONS, None, tmp_path)

    assert len(samples) == 6
    assert all(s.qa.answers == () and s.qa.answer_type is None for s in samples)


# --------------------------------------------------------------------------------------------------------------------
# LLaVA


def test_llava_roles_and_skipped_text_only_entry(public, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="visionllm.data.readers"):
        samples = read_llava(public / LLAVA, tmp_path)

    assert [s.image_id for s in samples] == ["000000033471", "000000052846"]  # "i6IyJda_0" has no image
    assert "skipped 1 text-only conversations" in caplog.text
    bus = samples[0]
    assert bus.task is Task.CHAT and bus.image_path == tmp_path / "000000033471.jpg"
    assert [t.role for t in bus.conversation] == ["user", "assistant", "user", "assistant"]
    assert bus.conversation[0] == Turn(role="user", text="<image>\nWhat are the colors of the bus in the image?")
    assert samples[1].image_path == tmp_path / "coco/train2017/000000052846.jpg"


# --------------------------------------------------------------------------------------------------------------------
# Semantic segmentation

VOC_2007_000032 = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 255, 255, 255, 255, 255, 0, 0],
        [0, 255, 1, 1, 1, 255, 0, 0],
        [0, 255, 1, 1, 1, 255, 0, 0],
        [0, 255, 255, 255, 255, 255, 0, 0],
        [0, 0, 0, 0, 0, 255, 255, 255],
        [0, 0, 0, 0, 0, 255, 15, 255],
        [0, 0, 0, 0, 0, 255, 15, 255],
    ],
    dtype=np.uint8,
)  # aeroplane (1), person (15), 255 = the "void" border


def test_semantic_masks_pairs_voc_images_with_palette_labels(public):
    samples = read_semantic_masks(public / VOC / "JPEGImages", public / VOC / "SegmentationClass")

    assert [s.image_id for s in samples] == ["2007_000032", "2007_000039"]
    assert all(s.task is Task.SEMANTIC_SEGMENTATION for s in samples)
    first = samples[0]
    assert first.image_path == public / VOC / "JPEGImages/2007_000032.jpg"
    assert first.semantic_mask_path == public / VOC / "SegmentationClass/2007_000032.png"
    assert Image.open(first.semantic_mask_path).mode == "P"
    labels = load_label_map(first.semantic_mask_path)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, VOC_2007_000032)  # palette indices, not colours


def test_semantic_masks_ade20k_grey_labels(public):
    ade = public / ADE
    samples = read_semantic_masks(ade / "images/validation", ade / "annotations/validation", image_suffix=".jpg")

    assert [s.image_id for s in samples] == ["ADE_val_00000001"]
    labels = load_label_map(samples[0].semantic_mask_path)
    assert labels.shape == (8, 8) and set(np.unique(labels).tolist()) == {0, 1, 4, 15}


def test_semantic_masks_image_without_mask_lists_it(public, tmp_path):
    image_dir = tmp_path / "JPEGImages"
    image_dir.mkdir()
    for stem in ("2007_000032", "2007_000039", "2007_000042", "2007_000061"):
        (image_dir / f"{stem}.jpg").write_bytes((public / VOC / "JPEGImages/2007_000032.jpg").read_bytes())

    with pytest.raises(
        FileNotFoundError, match=r"no label file <stem>\.png for 2 of 4 images.*2007_000042\.jpg, 2007_000061\.jpg"
    ):
        read_semantic_masks(image_dir, public / VOC / "SegmentationClass")


def test_load_label_map_refuses_rgb(tmp_path):
    path = tmp_path / "colour_mask.png"
    Image.new("RGB", (8, 8), (128, 0, 0)).save(path)

    with pytest.raises(DatasetFormatError, match=r"colour_mask\.png: a RGB image; expected a single-channel"):
        load_label_map(path)


# --------------------------------------------------------------------------------------------------------------------
# Bad input: every reader names the file, the entry and what it expected.


def _set(*keys_and_value: Any) -> Callable[[Any], Any]:
    *keys, value = keys_and_value

    def edit(data):
        parent = data
        for key in keys[:-1]:
            parent = parent[key]
        parent[keys[-1]] = value
        return data

    return edit


def _delete(*keys: Any) -> Callable[[Any], Any]:
    def edit(data):
        parent = data
        for key in keys[:-1]:
            parent = parent[key]
        del parent[keys[-1]]
        return data

    return edit


READERS: dict[Path, Callable[[Path, Path], Any]] = {
    INSTANCES: lambda path, public: read_coco_instances(path, "val2017"),
    KEYPOINTS: lambda path, public: read_coco_keypoints(path, "val2017"),
    CAPTIONS: lambda path, public: read_coco_captions(path, "val2017"),
    REFS: lambda path, public: read_refcoco(path, public / REF_INSTANCES, "train2014"),
    REF_INSTANCES: lambda path, public: read_refcoco(public / REFS, path, "train2014"),
    VQA_QUESTIONS: lambda path, public: read_vqav2(path, public / VQA_ANSWERS, "val2014"),
    VQA_ANSWERS: lambda path, public: read_vqav2(public / VQA_QUESTIONS, path, "val2014"),
    LLAVA: lambda path, public: read_llava(path, "images"),
}

BAD_FILES = [
    # fixture, edit, message fragments (the file's name is checked for every case)
    (INSTANCES, _delete("annotations", 1, "bbox"), ["annotation 1768", "missing `bbox`"]),
    (INSTANCES, _set("annotations", 1, "bbox", "388,69,109,277"), ["annotation 1768", "`bbox` should be a list"]),
    (INSTANCES, _set("annotations", 1, "bbox", [388.66, 69.92, 109.41]), ["annotation 1768", "[x, y, width, height]"]),
    (INSTANCES, _set("annotations", 1, "bbox", [388.66, 69.92, -1, 5]), ["annotation 1768", "[x, y, width, height]"]),
    (INSTANCES, _set("images", {}), ["top level", "`images` should be a list"]),
    (INSTANCES, _delete("categories"), ["top level", "missing `categories`"]),
    (INSTANCES, _delete("images", 0, "file_name"), ["image 397133", "missing `file_name`"]),
    (INSTANCES, _set("images", 1, "width", "352"), ["image 37777", "`width` should be an integer"]),
    (INSTANCES, _set("annotations", 1, "category_id", 999), ["annotation 1768", "category_id 999 is not in"]),
    (INSTANCES, _set("annotations", 1, "image_id", 1), ["annotation 1768", "image_id 1 is not in `images`"]),
    (INSTANCES, _set("annotations", 0, "id", 1768), ["annotation 1768", "duplicate annotation id"]),
    (INSTANCES, _set("annotations", 1, "iscrowd", True), ["annotation 1768", "`iscrowd` should be an integer"]),
    (INSTANCES, _set("annotations", 1, "segmentation", [[1.0, 2.0, 3.0]]), ["annotation 1768", "segmentation[0]"]),
    (INSTANCES, _set("annotations", 1, "segmentation", "polygon"), ["annotation 1768", "a list or an object"]),
    (INSTANCES, _set("annotations", 5, "segmentation", "counts", [1, 2, 3]), ["annotation 900100252219", "sum to 6"]),
    (INSTANCES, _delete("annotations", 5, "segmentation", "size"), ["annotation 900100252219", "missing `size`"]),
    (INSTANCES, _set("annotations", 1, "attributes", {"size": 3}), ["annotation 1768", "map names to strings"]),
    (KEYPOINTS, _set("annotations", 1, "keypoints", [0] * 50), ["annotation 1768", "17 flat [x, y, visibility]"]),
    (KEYPOINTS, _set("annotations", 1, "keypoints", 2, 3), ["annotation 1768", "visibility should be 0, 1 or 2"]),
    (KEYPOINTS, _delete("annotations", 1, "num_keypoints"), ["annotation 1768", "missing `num_keypoints`"]),
    (KEYPOINTS, _set("categories", 0, "skeleton", [[0, 1]]), ["category 1", "1-based keypoint indices"]),
    (KEYPOINTS, _delete("categories", 0, "keypoints"), ["category 1 has no `keypoints`"]),
    (CAPTIONS, _set("annotations", 0, "caption", 42), ["annotation 370509", "`caption` should be a string"]),
    (CAPTIONS, _set("annotations", 0, "caption", "  "), ["annotation 370509", "`caption` is empty"]),
    (REFS, _delete(0, "sentences"), ["ref 0", "missing `sentences`"]),
    (REFS, _set(1, "sentences", 0, "sent", None), ["ref 1 sentences[0]", "`sent` should be a string"]),
    (REFS, _set(1, "sentences", []), ["ref 1", "`sentences` is empty"]),
    (REFS, _set(2, "ann_id", 1), ["ref 2", "ann_id 1 is not an annotation"]),
    (REFS, _set(2, "image_id", 581857), ["ref 2", "annotation 467389 is on image 133212"]),
    (REFS, _set(3, "split", 2), ["ref 3", "`split` should be a string"]),
    (REFS, lambda refs: {"refs": refs}, ["top level", "should be a list of refs"]),
    (REF_INSTANCES, _delete("annotations"), ["top level", "missing `annotations`"]),
    (VQA_QUESTIONS, _delete("questions", 0, "question"), ["question 262148000", "missing `question`"]),
    (VQA_QUESTIONS, _set("questions", 1, "image_id", "262148"), ["question 262148001", "`image_id` should be an"]),
    (VQA_QUESTIONS, _set("questions", 2, "image_id", 393225), ["question 262148002", "on image 393225"]),
    (VQA_ANSWERS, _delete("annotations", 0), ["no annotation for 1 questions", "458752000"]),
    (VQA_ANSWERS, _set("annotations", 0, "answers", "frisbee"), ["question 458752000", "`answers` should be a list"]),
    (VQA_ANSWERS, _delete("annotations", 0, "answers", 3, "answer"), ["question 458752000 answers[3]", "`answer`"]),
    (VQA_ANSWERS, _set("data_subtype", "train2014"), ["is val2014", "is train2014"]),
    (LLAVA, _set(0, "conversations", 0, "from", "gpt"), ["entries[0] (id '000000033471')", "alternate human, gpt"]),
    (LLAVA, _set(0, "conversations", 1, "from", "human"), ["entries[0]", "conversations[1] is from 'human'"]),
    (LLAVA, _set(2, "conversations", 1, "from", "system"), ["entries[2]", "`from` should be 'human' or 'gpt'"]),
    (LLAVA, _set(0, "conversations", 2, "value", "<image>\nAnd now?"), ["entries[0]", "appears 2 times"]),
    (
        LLAVA,
        _set(
            2, "conversations", [{"from": "human", "value": "Where is the cat?"}, {"from": "gpt", "value": "<image>"}]
        ),
        ["entries[2]", "in a gpt turn"],
    ),
    (LLAVA, _delete(2, "conversations", 1), ["entries[2]", "last turn is from 'human'"]),
    (LLAVA, _set(2, "conversations", []), ["entries[2]", "`conversations` is empty"]),
    (LLAVA, _delete(0, "conversations"), ["entries[0]", "missing `conversations`"]),
    (LLAVA, _set(2, "image", ["a.jpg", "b.jpg"]), ["entries[2]", "`image` should be a string"]),
    (LLAVA, _delete(0, "id"), ["entries[0]", "missing `id`"]),
    (LLAVA, lambda entries: {"data": entries}, ["top level", "should be a list of conversations"]),
]


@pytest.mark.parametrize(
    ("fixture", "edit", "fragments"),
    BAD_FILES,
    ids=[f"{fixture.stem}: {fragments[-1]}" for fixture, _, fragments in BAD_FILES],
)
def test_bad_file_raises_format_error_naming_file_and_entry(public, tmp_path, fixture, edit, fragments):
    path = _rewrite(public / fixture, tmp_path, edit)

    with pytest.raises(DatasetFormatError) as raised:
        READERS[fixture](path, public)

    message = str(raised.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("fixture", list(READERS))
def test_missing_file_names_path_and_what_it_should_be(public, tmp_path, fixture):
    missing = tmp_path / fixture.name

    with pytest.raises(FileNotFoundError, match=r"no such file; expected a (COCO|RefCOCO|VQAv2|LLaVA)") as raised:
        READERS[fixture](missing, public)
    assert str(missing) in str(raised.value)


@pytest.mark.parametrize("fixture", [INSTANCES, VQA_QUESTIONS, LLAVA])
def test_invalid_json_is_a_format_error(public, tmp_path, fixture):
    path = tmp_path / fixture.name
    path.write_text('{"images": [')

    with pytest.raises(DatasetFormatError, match=r"not valid JSON"):
        READERS[fixture](path, public)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda d: read_semantic_masks(d / "nope", d), r"nope: no such directory; expected the folder of images"),
        (lambda d: read_semantic_masks(d, d / "nope"), r"no such directory; expected the folder of label PNGs"),
        (lambda d: read_semantic_masks(d, d), r"no image ending in \.jpg / \.jpeg / \.png"),
        (lambda d: load_label_map(d / "nope.png"), r"nope\.png: no such file; expected a single-channel PNG"),
        (lambda d: read_coco_keypoint_schema(d / "nope.json"), r"no such file; expected a COCO person_keypoints"),
    ],
)
def test_missing_folders_and_files(tmp_path, call, match):
    with pytest.raises(FileNotFoundError, match=match):
        call(tmp_path)


def test_load_label_map_not_an_image(tmp_path):
    path = tmp_path / "labels.png"
    path.write_text("not a png")

    with pytest.raises(DatasetFormatError, match=r"labels\.png: not an image"):
        load_label_map(path)
