"""Standard metrics, computed by (or exactly as) the official tools.

* ``coco_metrics``: box, mask and keypoint AP/AR through pycocotools' COCOeval.
* ``grounding_precision``: Precision@0.5 of referring-expression grounding.
* ``caption_metrics``: BLEU-1..4 and CIDEr(-D) through pycocoevalcap, as the COCO caption evaluation
  computes them (PTB tokenizer on both sides).
* ``vqa_accuracy``: VQAv2 accuracy, the algorithm of the official ``vqaEval.py``.
* ``mean_iou``, ``mask_iou``, ``interactive_iou``: semantic and interactive segmentation IoU.

The official tools print as they work; everything they print is sent to this module's logger at
debug level instead.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from visionllm.eval.vqa_normalize import clean_answer_whitespace, normalize_vqa_answer
from visionllm.ops.boxes import box_iou

__all__ = [
    "BOX_STAT_NAMES",
    "KEYPOINT_STAT_NAMES",
    "caption_metrics",
    "coco_metrics",
    "grounding_precision",
    "interactive_iou",
    "mask_iou",
    "mean_iou",
    "normalize_vqa_answer",
    "vqa_accuracy",
]

logger = logging.getLogger(__name__)

IouType = Literal["bbox", "segm", "keypoints"]
K = TypeVar("K", bound=Hashable)

# Names of COCOeval.stats, in its order.
BOX_STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip
KEYPOINT_STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")

# The field that carries the prediction in the official result format of each iou type.
_RESULT_FIELD: Mapping[str, str] = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}
# Ground-truth fields COCOeval reads (beyond id, image_id, category_id), per iou type.
_GT_FIELDS: Mapping[str, tuple[str, ...]] = {
    "bbox": ("area", "iscrowd", "bbox"),
    "segm": ("area", "iscrowd", "segmentation"),
    "keypoints": ("area", "iscrowd", "bbox", "keypoints", "num_keypoints"),
}
_COCO_NUM_KEYPOINTS = 17  # COCOeval's default OKS sigmas are those of the 17 COCO person keypoints.


# --------------------------------------------------------------------------------------------------
# COCO detection, instance segmentation and keypoints
# --------------------------------------------------------------------------------------------------


def coco_metrics(
    gt: Mapping[str, Any] | str | os.PathLike[str],
    results: Sequence[Mapping[str, Any]],
    iou_type: IouType,
    image_ids: Sequence[int] | None = None,
    keypoint_sigmas: Sequence[float] | None = None,
) -> dict[str, float]:
    """AP and AR of COCO-format results, computed by pycocotools' COCOeval.

    Neither ``gt`` nor ``results`` is modified (COCOeval and ``COCO.loadRes`` write into the dicts
    they are given, so they get copies). Each result is passed on in the official result format of
    ``iou_type``: ``image_id``, ``category_id``, ``score`` and one of ``bbox`` (xywh, pixels),
    ``segmentation`` (RLE; polygons and uncompressed RLE are encoded here with the image size from
    ``gt``) or ``keypoints`` (x, y, v triplets, pixels). Other fields are dropped, because
    ``loadRes`` picks its branch from the fields present: with a ``bbox`` next to a segmentation it
    would take the object area from the box, so APs/APm/APl of masks would use box areas (the
    reason detectron2 drops ``bbox`` before mask evaluation).

    Args:
        gt: A COCO ground-truth dict (``images``, ``annotations``, ``categories``; ``info`` and
            ``licenses`` optional) or the path of a COCO JSON file. Annotations need ``id``,
            ``image_id``, ``category_id``, ``area``, ``iscrowd`` and the fields of ``iou_type``
            (``bbox``; ``segmentation`` and image ``height``/``width``; ``keypoints``,
            ``num_keypoints`` and ``bbox``).
        results: COCO result dicts. Results on images that are not in ``gt`` are dropped with a
            warning. An empty list is evaluated as "no detections" (AP 0).
        iou_type: "bbox", "segm" or "keypoints".
        image_ids: Evaluate on these images only (all of them must be in ``gt``); None: all images
            of ``gt``.
        keypoint_sigmas: Per-keypoint OKS sigmas, for keypoint sets other than the 17 COCO person
            keypoints; None: COCOeval's defaults, which need exactly 17 keypoints.

    Returns:
        COCOeval's stats under their names: for "bbox" and "segm" ``AP, AP50, AP75, APs, APm, APl,
        AR1, AR10, AR100, ARs, ARm, ARl``; for "keypoints" ``AP, AP50, AP75, APm, APl, AR, AR50,
        AR75, ARm, ARl``. Values are in [0, 1], or -1 where COCOeval finds the metric undefined (no
        ground truth in that area range), as in pycocotools.

    Raises:
        ValueError: On an unknown ``iou_type``, malformed ground truth or results, ``image_ids``
            not in ``gt``, or keypoints that do not fit the sigmas.
    """
    if iou_type not in _RESULT_FIELD:
        raise ValueError(f"iou_type must be one of {sorted(_RESULT_FIELD)}, got {iou_type!r}")
    if isinstance(gt, (str, os.PathLike)):
        with Path(gt).open(encoding="utf-8") as file:
            gt = json.load(file)
    dataset = _copy_ground_truth(gt, iou_type)
    images = {image["id"]: image for image in dataset["images"]}

    if image_ids is not None:
        if not image_ids:
            raise ValueError("image_ids is empty: there is nothing to evaluate")
        unknown = sorted(set(image_ids) - set(images))
        if unknown:
            raise ValueError(f"image_ids not in the ground truth: {_preview(unknown)}")

    sigmas = _keypoint_sigmas(dataset, results, keypoint_sigmas) if iou_type == "keypoints" else None
    kept = [result for result in results if result.get("image_id") in images]
    if len(kept) < len(results):
        dropped = sorted({result.get("image_id") for result in results} - set(images), key=str)
        logger.warning(
            "coco_metrics: dropped %d results on images not in the ground truth (image ids %s)",
            len(results) - len(kept),
            _preview(dropped),
        )
    official = [_official_result(result, iou_type, images) for result in kept]

    with _stdout_to_debug_log("pycocotools"):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if official:
            coco_dt = coco_gt.loadRes(official)
        else:
            # loadRes cannot take an empty list (it reads results[0]); an empty result set is "no detections".
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": list(dataset["images"]),
                "categories": copy.deepcopy(dataset["categories"]),
                "annotations": [],
            }
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(image_ids))
        if sigmas is not None:
            evaluator.params.kpt_oks_sigmas = sigmas
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    names = KEYPOINT_STAT_NAMES if iou_type == "keypoints" else BOX_STAT_NAMES
    return {name: float(value) for name, value in zip(names, evaluator.stats, strict=True)}


def _copy_ground_truth(gt: Mapping[str, Any], iou_type: str) -> dict[str, Any]:
    """Validates a COCO ground-truth dict and returns a copy COCOeval may write into.

    Annotation ids are renumbered 1..N in file order: COCOeval marks an unmatched detection with
    the match id 0, so a ground-truth annotation with id 0 would be counted as unmatched, and
    duplicate ids collapse in COCO's index. The order, and so every metric, is unchanged.
    """
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise ValueError(f"the COCO ground truth has no {key!r} list")
    image_ids = [image["id"] for image in gt["images"]]
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("the COCO ground truth has duplicate image ids")
    known_images = set(image_ids)
    if iou_type == "segm":
        for image in gt["images"]:
            if "height" not in image or "width" not in image:
                raise ValueError(f"image {image['id']} needs 'height' and 'width' to rasterise segmentations")

    required = ("image_id", "category_id", *_GT_FIELDS[iou_type])
    annotations = []
    for index, annotation in enumerate(gt["annotations"]):
        missing = [field for field in required if field not in annotation]
        if missing:
            raise ValueError(f"ground-truth annotation {annotation.get('id', f'#{index}')} lacks {missing}")
        if annotation["image_id"] not in known_images:
            raise ValueError(
                f"ground-truth annotation {annotation.get('id', f'#{index}')} "
                f"is on image {annotation['image_id']}, which is not in 'images'"
            )
        annotations.append({**annotation, "id": index + 1})
    original_ids = [annotation.get("id") for annotation in gt["annotations"]]
    if 0 in original_ids or None in original_ids or len(set(original_ids)) != len(original_ids):
        logger.warning("coco_metrics: ground-truth annotation ids are missing, 0 or duplicated; renumbered 1..N")

    return {
        "info": copy.deepcopy(gt.get("info", {})),
        "licenses": copy.deepcopy(gt.get("licenses", [])),
        "images": [dict(image) for image in gt["images"]],
        "annotations": annotations,
        "categories": copy.deepcopy(list(gt["categories"])),
    }


def _official_result(result: Mapping[str, Any], iou_type: str, images: Mapping[int, Mapping[str, Any]]) -> dict:
    """One result in the official result format of ``iou_type`` (a fresh dict loadRes may write into)."""
    field = _RESULT_FIELD[iou_type]
    missing = [key for key in ("image_id", "category_id", "score", field) if key not in result]
    if missing:
        raise ValueError(f"a {iou_type} result lacks {missing}: {_short_repr(result)}")
    value = result[field]
    if iou_type == "bbox":
        value = [float(v) for v in value]
        if len(value) != 4:
            raise ValueError(f"a bbox result needs 4 numbers (x, y, w, h), got {result[field]!r}")
    elif iou_type == "segm":
        image = images[result["image_id"]]
        value = _to_compressed_rle(value, int(image["height"]), int(image["width"]))
    else:
        value = [float(v) for v in value]
    return {
        "image_id": result["image_id"],
        "category_id": result["category_id"],
        "score": float(result["score"]),
        field: value,
    }


def _to_compressed_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """Encodes polygons ([[x1, y1, x2, y2, ...], ...], pixels) or uncompressed RLE as compressed RLE."""
    if isinstance(segmentation, Mapping):
        if "counts" not in segmentation or "size" not in segmentation:
            raise ValueError("an RLE segmentation needs 'counts' and 'size'")
        if isinstance(segmentation["counts"], (str, bytes)):
            return dict(segmentation)
        return mask_utils.frPyObjects(dict(segmentation), *segmentation["size"])
    polygons = [[float(v) for v in polygon] for polygon in segmentation]
    if not polygons or any(len(polygon) < 6 or len(polygon) % 2 for polygon in polygons):
        raise ValueError("a polygon segmentation needs polygons of at least 3 (x, y) points")
    return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))


def _keypoint_sigmas(
    dataset: Mapping[str, Any], results: Sequence[Mapping[str, Any]], keypoint_sigmas: Sequence[float] | None
) -> NDArray[np.float64] | None:
    """Checks that ground truth, results and sigmas agree on the number of keypoints.

    Returns:
        The sigmas to set on COCOeval, or None to keep its defaults (17 COCO person keypoints).
    """
    counts: dict[int, list[str]] = {}
    for category in dataset["categories"]:
        if "keypoints" in category:
            counts.setdefault(len(category["keypoints"]), []).append(f"category {category.get('name', category['id'])}")
    for annotation in dataset["annotations"]:
        counts.setdefault(len(annotation["keypoints"]) // 3, []).append("ground truth")
    for result in results:
        if "keypoints" in result:
            counts.setdefault(len(result["keypoints"]) // 3, []).append("results")
    if len(counts) > 1:
        found = {count: sorted(set(sources)) for count, sources in counts.items()}
        raise ValueError(f"ground truth and results disagree on the number of keypoints: {found}")
    num_keypoints = next(iter(counts), None)
    if keypoint_sigmas is None:
        if num_keypoints not in (None, _COCO_NUM_KEYPOINTS):
            raise ValueError(
                f"COCOeval's default OKS sigmas are for the {_COCO_NUM_KEYPOINTS} COCO person keypoints, but this "
                f"ground truth has {num_keypoints} keypoints per object: pass keypoint_sigmas (one per keypoint)"
            )
        return None
    sigmas = np.asarray(keypoint_sigmas, dtype=np.float64)
    if sigmas.ndim != 1 or (num_keypoints is not None and len(sigmas) != num_keypoints):
        raise ValueError(f"keypoint_sigmas needs one sigma per keypoint ({num_keypoints}), got shape {sigmas.shape}")
    if not (np.isfinite(sigmas) & (sigmas > 0)).all():
        raise ValueError("keypoint_sigmas must be finite and positive")
    return sigmas


# --------------------------------------------------------------------------------------------------
# Grounding
# --------------------------------------------------------------------------------------------------


def grounding_precision(
    predicted_boxes_xyxy_px: Sequence[Sequence[float] | None],
    gt_boxes_xyxy_px: Sequence[Sequence[float]],
    iou_threshold: float = 0.5,
) -> float:
    """Precision@IoU of referring-expression grounding (Acc@0.5 on RefCOCO and the like).

    A sample is a hit when its predicted box overlaps its ground-truth box with IoU >= the
    threshold. IoU is that of continuous coordinates (area = (x2 - x1) * (y2 - y1)).

    Args:
        predicted_boxes_xyxy_px: Per sample, the first box the model gave, as (x1, y1, x2, y2) in
            pixels, or None when the answer had no box or could not be parsed (a miss).
        gt_boxes_xyxy_px: Per sample, the ground-truth box (x1, y1, x2, y2), in pixels.
        iou_threshold: The IoU a hit needs, in (0, 1].

    Returns:
        The fraction of hits, in [0, 1].

    Raises:
        ValueError: On different numbers of predictions and ground truths, no samples, a box that is
            not 4 numbers, or a threshold outside (0, 1].
    """
    if len(predicted_boxes_xyxy_px) != len(gt_boxes_xyxy_px):
        raise ValueError(f"{len(predicted_boxes_xyxy_px)} predictions for {len(gt_boxes_xyxy_px)} ground-truth boxes")
    if len(gt_boxes_xyxy_px) == 0:
        raise ValueError("grounding_precision needs at least one sample")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    hits = 0
    for predicted, target in zip(predicted_boxes_xyxy_px, gt_boxes_xyxy_px, strict=True):
        target_box = np.asarray(target, dtype=np.float64)
        if target_box.shape != (4,):
            raise ValueError(f"a ground-truth box must be 4 numbers (x1, y1, x2, y2), got {target!r}")
        if predicted is None:
            continue
        predicted_box = np.asarray(predicted, dtype=np.float64)
        if predicted_box.shape != (4,):
            raise ValueError(f"a predicted box must be 4 numbers (x1, y1, x2, y2) or None, got {predicted!r}")
        hits += int(box_iou(predicted_box, target_box)[0, 0] >= iou_threshold)
    return hits / len(gt_boxes_xyxy_px)


# --------------------------------------------------------------------------------------------------
# Captioning
# --------------------------------------------------------------------------------------------------


def caption_metrics(predictions: Mapping[K, str], references: Mapping[K, Sequence[str]]) -> dict[str, float]:
    """BLEU-1..4 and CIDEr of captions, as the COCO caption evaluation computes them.

    Both sides go through pycocoevalcap's PTBTokenizer (Stanford CoreNLP, run with Java: lower-case,
    PTB tokens, punctuation removed), then ``Bleu(4)`` ("closest" reference length, corpus-level)
    and ``Cider()`` score them. pycocoevalcap's ``Cider`` is CIDEr-D (clipped n-gram counts and a
    length penalty) with document frequencies taken from the references of this call, so CIDEr
    depends on the whole set evaluated together and is 0 on a set of one image.

    Every kind of line break in a caption becomes a space before tokenising: the tokenizer writes
    one caption per line and pairs its output lines back with captions by position, so a "\\r" or
    "\\u2028" inside a caption would silently shift every later caption onto the wrong image.

    Args:
        predictions: Per image id, the generated caption.
        references: Per image id, the reference captions (at least one each).

    Returns:
        ``BLEU-1``, ``BLEU-2``, ``BLEU-3``, ``BLEU-4`` in [0, 1] and ``CIDEr`` (>= 0; 10 is the
        maximum of a caption equal to all its references).

    Raises:
        ValueError: When the two mappings do not cover the same ids, or a reference list is empty.
        RuntimeError: When Java is not installed (the tokenizer needs it).
    """
    _check_same_ids(predictions, references, "predictions", "references")
    if not predictions:
        raise ValueError("caption_metrics needs at least one caption")
    for image_id, captions in references.items():
        if isinstance(captions, str) or not captions:
            raise ValueError(f"references[{image_id!r}] must be a non-empty sequence of captions")
    if shutil.which("java") is None:
        raise RuntimeError(
            "caption_metrics needs Java: pycocoevalcap's PTB tokenizer runs Stanford CoreNLP. "
            "Install a Java runtime, e.g. `apt-get install default-jre-headless`, and make sure `java` is on PATH."
        )
    # Imported here so that the rest of this module works without pycocoevalcap's Java parts.
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts = _tokenize({image_id: [str(c) for c in references[image_id]] for image_id in predictions})
    res = _tokenize({image_id: [str(caption)] for image_id, caption in predictions.items()})
    with _stdout_to_debug_log("pycocoevalcap"):
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, _ = Cider().compute_score(gts, res)
    scores = {f"BLEU-{n}": float(bleu[n - 1]) for n in range(1, 5)}
    scores["CIDEr"] = float(cider)
    return scores


def _tokenize(captions: Mapping[K, Sequence[str]]) -> dict[K, list[str]]:
    """Runs pycocoevalcap's PTBTokenizer on captions keyed by image id, checking its output lines up."""
    from pycocoevalcap.tokenizer import ptbtokenizer

    # " ".join(split()) turns every line break (and run of whitespace) into one space; PTB tokens are
    # whitespace-separated, so the tokens are the same as the official tool's for any caption it handles.
    inputs = {image_id: [{"caption": " ".join(c.split())} for c in texts] for image_id, texts in captions.items()}
    try:
        with _stderr_fd_to_debug_log("PTBTokenizer"):
            tokenized = ptbtokenizer.PTBTokenizer().tokenize(inputs)
    except PermissionError as error:
        folder = Path(ptbtokenizer.__file__).parent
        raise RuntimeError(
            f"pycocoevalcap's PTBTokenizer writes a temporary file next to its jar, in {folder}, which is not writable"
        ) from error
    for image_id, texts in captions.items():
        if len(tokenized.get(image_id, [])) != len(texts):
            raise RuntimeError(
                f"the PTB tokenizer returned {len(tokenized.get(image_id, []))} captions for image "
                f"{image_id!r}, which has {len(texts)}: its output no longer lines up with the input"
            )
    return tokenized


# --------------------------------------------------------------------------------------------------
# VQA
# --------------------------------------------------------------------------------------------------


def vqa_accuracy(
    predictions: Mapping[int, str], annotations: Sequence[Mapping[str, Any]], allow_missing: bool = False
) -> dict[str, float]:
    """VQAv2 accuracy, as the official ``vqaEval.py`` (GT-Vision-Lab/VQA) computes it.

    Per question: the prediction and the human answers have newlines and tabs turned into spaces
    and their ends stripped. Only when the human answers are not all identical are they, and the
    prediction, normalised (``normalize_vqa_answer``); when all annotators gave the same string,
    neither side is, so "Yes." scores 0 against ten "yes" (the official code's rule; the VQA authors
    say it keeps answers to text-reading questions raw). The accuracy is then the mean, over each
    human answer left out in turn, of min(1, #remaining answers equal to the prediction / 3).

    "Left out" follows the official code, which removes every answer dict equal to the one left out;
    with VQAv2's distinct ``answer_id`` per answer this removes exactly one.

    Args:
        predictions: Per question id, the model's answer.
        annotations: VQAv2 annotation dicts: ``question_id``, ``answers`` (dicts with ``answer``,
            and usually ``answer_confidence`` and ``answer_id``), ``answer_type``.
        allow_missing: When False, questions without a prediction raise; when True they score 0
            (with a warning). Predictions for questions not in ``annotations`` are ignored (with a
            warning).

    Returns:
        ``accuracy``, the mean over questions, ``accuracy/<answer_type>`` (e.g.
        ``accuracy/yes/no``, ``accuracy/number``, ``accuracy/other``) for each type present, and
        ``accuracy[<question_type>]`` (e.g. ``accuracy[what color is the]``) where the annotations
        have a ``question_type`` (the official tool's per-question-type accuracy); all in [0, 1]
        (the official tool reports percentages rounded to 2 decimals).

    Raises:
        ValueError: On no annotations, duplicate or answerless questions, or missing predictions
            when ``allow_missing`` is False.
    """
    if not annotations:
        raise ValueError("vqa_accuracy needs at least one annotation")
    question_ids = [annotation["question_id"] for annotation in annotations]
    if len(set(question_ids)) != len(question_ids):
        raise ValueError("annotations have duplicate question ids")
    missing = [question_id for question_id in question_ids if question_id not in predictions]
    if missing:
        if not allow_missing:
            raise ValueError(
                f"no prediction for {len(missing)} of {len(question_ids)} questions, "
                f"e.g. {_preview(missing)} (pass allow_missing=True to score them 0)"
            )
        logger.warning(
            "vqa_accuracy: no prediction for %d questions (e.g. %s); they score 0", len(missing), _preview(missing)
        )
    extra = set(predictions) - set(question_ids)
    if extra:
        logger.warning(
            "vqa_accuracy: ignored %d predictions for questions not in the annotations (e.g. %s)",
            len(extra),
            _preview(sorted(extra, key=str)),
        )

    per_question: list[float] = []
    per_type: dict[str, list[float]] = {}
    per_question_type: dict[str, list[float]] = {}
    for annotation in annotations:
        if not annotation["answers"]:
            raise ValueError(f"question {annotation['question_id']} has no answers")
        prediction = predictions.get(annotation["question_id"])
        score = 0.0 if prediction is None else _vqa_question_accuracy(prediction, annotation["answers"])
        per_question.append(score)
        per_type.setdefault(str(annotation["answer_type"]), []).append(score)
        if "question_type" in annotation:
            per_question_type.setdefault(str(annotation["question_type"]), []).append(score)

    scores = {"accuracy": math.fsum(per_question) / len(per_question)}
    for answer_type, values in per_type.items():
        scores[f"accuracy/{answer_type}"] = math.fsum(values) / len(values)
    for question_type, values in per_question_type.items():
        scores[f"accuracy[{question_type}]"] = math.fsum(values) / len(values)
    return scores


def _vqa_question_accuracy(prediction: str, answers: Sequence[Mapping[str, Any]]) -> float:
    """The official per-question accuracy (see ``vqa_accuracy``)."""
    answers = [{**answer, "answer": clean_answer_whitespace(answer["answer"])} for answer in answers]
    predicted = clean_answer_whitespace(prediction)
    if len({answer["answer"] for answer in answers}) > 1:
        answers = [{**answer, "answer": normalize_vqa_answer(answer["answer"])} for answer in answers]
        predicted = normalize_vqa_answer(predicted)
    leave_one_out = []
    for left_out in answers:
        matches = sum(1 for other in answers if other != left_out and other["answer"] == predicted)
        leave_one_out.append(min(1.0, matches / 3))
    return math.fsum(leave_one_out) / len(leave_one_out)


# --------------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------------


def mean_iou(
    predictions: Sequence[ArrayLike], targets: Sequence[ArrayLike], num_classes: int, ignore_index: int = 255
) -> dict[str, float | list[float]]:
    """Semantic segmentation IoU, accumulated over the whole set (the mmseg / ADE20K way).

    One confusion matrix collects the pixels of all images (pixels whose target is ``ignore_index``
    are left out); per-class IoU = TP / (TP + FP + FN) from it, so large images weigh more than small
    ones. A class with no pixel in either targets or predictions has an undefined IoU (NaN) and does
    not enter the mean.

    Args:
        predictions: Per image, an (H, W) integer array of predicted class ids in [0, num_classes).
        targets: Per image, an (H, W) integer array of class ids in [0, num_classes), or
            ``ignore_index``.
        num_classes: Number of classes.
        ignore_index: Target value of pixels that are not scored.

    Returns:
        ``mIoU``: the mean of the defined per-class IoUs (NaN when none is defined);
        ``per_class_iou``: a list of num_classes IoUs, NaN where undefined;
        ``pixel_accuracy``: correct pixels / scored pixels (NaN when no pixel is scored).

    Raises:
        ValueError: On different numbers of predictions and targets, no images, shape mismatches,
            or class ids out of range.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    if not targets:
        raise ValueError("mean_iou needs at least one image")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)  # rows: target, columns: prediction
    for index, (prediction, target) in enumerate(zip(predictions, targets, strict=True)):
        prediction = np.asarray(prediction)
        target = np.asarray(target)
        if prediction.shape != target.shape or target.ndim != 2:
            raise ValueError(
                f"image {index}: prediction {prediction.shape} and target {target.shape} must both be (H, W)"
            )
        if not (np.issubdtype(prediction.dtype, np.integer) and np.issubdtype(target.dtype, np.integer)):
            raise ValueError(f"image {index}: label maps must be integer arrays")
        scored = target != ignore_index
        target_ids = target[scored].astype(np.int64)
        predicted_ids = prediction[scored].astype(np.int64)
        for name, ids in (("target", target_ids), ("prediction", predicted_ids)):
            if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
                raise ValueError(
                    f"image {index}: {name} class ids must be in [0, {num_classes}) "
                    f"(or {ignore_index} in targets), found {ids.min()}..{ids.max()}"
                )
        confusion += np.bincount(target_ids * num_classes + predicted_ids, minlength=num_classes * num_classes).reshape(
            num_classes, num_classes
        )

    true_positive = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
    per_class = np.full(num_classes, np.nan)
    np.divide(true_positive, union, out=per_class, where=union > 0)
    defined = per_class[~np.isnan(per_class)]
    scored_pixels = confusion.sum()
    return {
        "mIoU": float(defined.mean()) if defined.size else math.nan,
        "per_class_iou": [float(value) for value in per_class],
        "pixel_accuracy": float(true_positive.sum() / scored_pixels) if scored_pixels else math.nan,
    }


def mask_iou(pred: ArrayLike, target: ArrayLike) -> float:
    """IoU of two binary masks.

    Args:
        pred: (H, W) bool mask.
        target: (H, W) bool mask.

    Returns:
        |pred & target| / |pred | target|, in [0, 1]; 1.0 when both masks are empty (they agree).
    """
    intersection, union = _intersection_union(pred, target)
    return intersection / union if union else 1.0


def interactive_iou(preds: Sequence[ArrayLike], targets: Sequence[ArrayLike]) -> dict[str, float]:
    """IoU of interactive (or referring) segmentation over a set of samples.

    Args:
        preds: Per sample, an (H, W) bool mask.
        targets: Per sample, the (H, W) bool ground-truth mask.

    Returns:
        ``mIoU``: the mean of per-sample IoUs (``mask_iou``, so an empty-vs-empty sample counts 1);
        ``cIoU``: cumulative intersection / cumulative union over all samples (1.0 if the union is
        empty everywhere).

    Raises:
        ValueError: On different numbers of predictions and targets, or no samples.
    """
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
    if not targets:
        raise ValueError("interactive_iou needs at least one sample")
    intersections, unions = zip(*(_intersection_union(p, t) for p, t in zip(preds, targets, strict=True)), strict=True)
    per_sample = [i / u if u else 1.0 for i, u in zip(intersections, unions, strict=True)]
    total_union = sum(unions)
    return {
        "mIoU": math.fsum(per_sample) / len(per_sample),
        "cIoU": sum(intersections) / total_union if total_union else 1.0,
    }


def _intersection_union(pred: ArrayLike, target: ArrayLike) -> tuple[int, int]:
    """Pixel counts of the intersection and the union of two (H, W) bool masks."""
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"masks must both be (H, W), got {pred.shape} and {target.shape}")
    if pred.dtype != np.bool_ or target.dtype != np.bool_:
        raise ValueError(f"masks must be bool arrays, got {pred.dtype} and {target.dtype}")
    return int(np.count_nonzero(pred & target)), int(np.count_nonzero(pred | target))


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _check_same_ids(first: Mapping[Any, Any], second: Mapping[Any, Any], first_name: str, second_name: str) -> None:
    """Raises ValueError naming the ids that one mapping has and the other lacks."""
    only_first = sorted(set(first) - set(second), key=str)
    only_second = sorted(set(second) - set(first), key=str)
    problems = []
    if only_first:
        problems.append(f"ids in {first_name} without {second_name}: {_preview(only_first)}")
    if only_second:
        problems.append(f"ids in {second_name} without {first_name}: {_preview(only_second)}")
    if problems:
        raise ValueError("; ".join(problems))


def _preview(items: Sequence[Any], limit: int = 10) -> str:
    """The first few items, for error messages."""
    shown = ", ".join(repr(item) for item in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)} in all)"


def _short_repr(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@contextlib.contextmanager
def _stdout_to_debug_log(tool: str) -> Iterator[None]:
    """Sends what Python code prints to stdout inside the block to the debug log."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        if buffer.getvalue().strip():
            logger.debug("%s output:\n%s", tool, buffer.getvalue().rstrip())


@contextlib.contextmanager
def _stderr_fd_to_debug_log(tool: str) -> Iterator[None]:
    """Sends what child processes write to stderr (file descriptor 2) inside the block to the debug log.

    The redirection is of the process's descriptor, so another thread writing to stderr meanwhile
    is captured too; the block should be short.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable descriptor 2: nothing to redirect
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace").strip()
            if text:
                logger.debug("%s stderr:\n%s", tool, text)
