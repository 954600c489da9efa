"""Readers for the public dataset formats. Each returns `Sample`s, the one sample type.

Readers parse annotation files and resolve `image_path = image_dir / file_name`; they never open images.
Every reader fails loudly on input that is not in its format:

- a missing file raises `FileNotFoundError` naming the path and what the file should be;
- a file in the wrong layout (missing key, wrong type, dangling id) raises `DatasetFormatError` naming the
  file, the offending entry (e.g. "annotation 1768") and what was expected.

Coordinates are pixels of the image as the source file states them (x right, y down).
"""

from __future__ import annotations

import builtins
import json
import logging
import pickle
import string
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from visionllm.data.sample import ObjectAnnotation, QuestionAnswer, Sample, Turn
from visionllm.formats.tasks import Task

logger = logging.getLogger(__name__)

JsonObject = dict[str, Any]
PathLike = str | Path

COCO2014_IMAGE_NAME = "COCO_{subtype}_{image_id:012d}.jpg"
"""VQAv2's images are COCO 2014's, named after the split (`data_subtype`) and the zero-padded image id."""


class DatasetFormatError(ValueError):
    """A dataset file that is not in the layout its reader expects.

    The message names the file, the offending entry and what was expected.
    """


@dataclass(frozen=True)
class KeypointSchema:
    """The keypoints of a COCO category.

    Attributes:
        names: keypoint names, in the order of the rows of `ObjectAnnotation.keypoints_xyv`.
        skeleton: limbs as pairs of keypoint indices, 0-based (COCO files store them 1-based).
    """

    names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...]


# --------------------------------------------------------------------------------------------------------------------
# Checked access to parsed files: every failure names the file and the entry.

_MISSING: Any = object()
_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object"}


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    """isinstance where `float` means any number and a bool is never a number (JSON true is not 1)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    return any(isinstance(value, (int, float) if k is float else k) for k in kinds)


def _describe(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class _Source:
    """A file being read, so that every error names it."""

    path: Path

    def error(self, where: str, message: str) -> DatasetFormatError:
        return DatasetFormatError(f"{self.path}: {where}: {message}")

    def mapping(self, value: Any, where: str) -> JsonObject:
        if not isinstance(value, dict):
            raise self.error(where, f"should be an object, got {_short(value)}")
        return value

    def field(
        self, entry: JsonObject, key: str, kind: type | tuple[type, ...], where: str, default: Any = _MISSING
    ) -> Any:
        """`entry[key]`, checked to be of `kind`; `default` when the key is absent (if one is given)."""
        if key not in entry:
            if default is not _MISSING:
                return default
            raise self.error(where, f"missing `{key}` (expected {_describe(kind)})")
        value = entry[key]
        if not _is(value, kind):
            raise self.error(where, f"`{key}` should be {_describe(kind)}, got {_short(value)}")
        return value

    def objects(self, entry: JsonObject, key: str, where: str) -> list[JsonObject]:
        """`entry[key]`, checked to be a list of objects."""
        values = self.field(entry, key, list, where)
        for i, value in enumerate(values):
            if not isinstance(value, dict):
                raise self.error(where, f"`{key}[{i}]` should be an object, got {_short(value)}")
        return values


def _existing_file(path: PathLike, what: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; expected {what}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected {what}")
    return path


def _existing_dir(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory; expected {what}")
    return path


def _open_json(path: PathLike, what: str) -> tuple[_Source, Any]:
    source = _Source(_existing_file(path, what))
    try:
        with source.path.open(encoding="utf-8") as f:
            return source, json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"{source.path}: not valid JSON ({e}); expected {what}") from e


def _open_json_object(path: PathLike, what: str) -> tuple[_Source, JsonObject]:
    source, root = _open_json(path, what)
    return source, source.mapping(root, "top level")


# --------------------------------------------------------------------------------------------------------------------
# COCO: instances, keypoints, captions (and RefCOCO's instances.json).

_COCO_INSTANCES = "a COCO instances JSON (`images`, `annotations`, `categories`)"
_COCO_KEYPOINTS = "a COCO person_keypoints JSON (`images`, `annotations`, `categories` with `keypoints`)"
_COCO_CAPTIONS = "a COCO captions JSON (`images`, `annotations` with `caption`)"


@dataclass(frozen=True)
class _CocoImage:
    image_id: int
    file_name: str
    width: int
    height: int


def _coco_images(source: _Source, root: JsonObject) -> dict[int, _CocoImage]:
    """The `images` of a COCO file by id, in file order."""
    images: dict[int, _CocoImage] = {}
    for i, entry in enumerate(source.objects(root, "images", "top level")):
        image_id = source.field(entry, "id", int, f"images[{i}]")
        where = f"image {image_id}"
        if image_id in images:
            raise source.error(where, "duplicate image id")
        images[image_id] = _CocoImage(
            image_id=image_id,
            file_name=source.field(entry, "file_name", str, where),
            width=source.field(entry, "width", int, where),
            height=source.field(entry, "height", int, where),
        )
    return images


def _coco_categories(source: _Source, root: JsonObject) -> dict[int, JsonObject]:
    """The `categories` of a COCO file by id (each checked to have an integer `id` and a string `name`)."""
    categories: dict[int, JsonObject] = {}
    for i, entry in enumerate(source.objects(root, "categories", "top level")):
        category_id = source.field(entry, "id", int, f"categories[{i}]")
        source.field(entry, "name", str, f"category {category_id}")
        if category_id in categories:
            raise source.error(f"category {category_id}", "duplicate category id")
        categories[category_id] = entry
    return categories


def _coco_annotations(
    source: _Source, root: JsonObject, images: Mapping[int, _CocoImage], bad: list[str] | None = None
) -> list[JsonObject]:
    """The `annotations` of a COCO file sorted by id, each with an integer `id` and a known `image_id`.

    With `bad` (a list), a malformed annotation is left out and its error appended to it instead of raised.
    """
    seen: set[int] = set()
    kept = []
    for i, ann in enumerate(source.objects(root, "annotations", "top level")):
        try:
            ann_id = source.field(ann, "id", int, f"annotations[{i}]")
            where = f"annotation {ann_id}"
            if ann_id in seen:
                raise source.error(where, "duplicate annotation id")
            image_id = source.field(ann, "image_id", int, where)
            if image_id not in images:
                raise source.error(where, f"image_id {image_id} is not in `images`")
        except DatasetFormatError as error:
            if bad is None:
                raise
            bad.append(str(error))
            continue
        seen.add(ann_id)
        kept.append(ann)
    return sorted(kept, key=lambda ann: ann["id"])


def _named(categories: Mapping[int, JsonObject], category_ids: dict[str, int] | None) -> None:
    """Fill `category_ids` (when given) with the categories' ids by name, in file order."""
    if category_ids is not None:
        category_ids.update({entry["name"]: category_id for category_id, entry in categories.items()})


def _skipping(bad: list[str] | None, read: Callable[[], Any]) -> Any:
    """`read()`, or None with its `DatasetFormatError` appended to `bad` when a list is given."""
    try:
        return read()
    except DatasetFormatError as error:
        if bad is None:
            raise
        bad.append(str(error))
        return None


def _coco_object(
    source: _Source,
    ann: JsonObject,
    categories: Mapping[int, JsonObject],
    keypoint_schemas: Mapping[int, KeypointSchema] | None = None,
) -> ObjectAnnotation:
    """One COCO annotation (already checked by `_coco_annotations`); with keypoints when schemas are given."""
    ann_id = ann["id"]
    where = f"annotation {ann_id}"
    category_id = source.field(ann, "category_id", int, where)
    if category_id not in categories:
        raise source.error(where, f"category_id {category_id} is not in `categories`")
    bbox = source.field(ann, "bbox", list, where)
    if len(bbox) != 4 or not all(_is(v, float) for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
        raise source.error(where, f"`bbox` should be [x, y, width, height] in pixels, got {_short(bbox)}")
    x, y, w, h = (float(v) for v in bbox)
    iscrowd = source.field(ann, "iscrowd", int, where, default=0)
    if iscrowd not in (0, 1):
        raise source.error(where, f"`iscrowd` should be 0 or 1, got {iscrowd!r}")
    area = source.field(ann, "area", float, where, default=None)
    polygons, rle = _coco_segmentation(source, ann, where)
    keypoints = None
    if keypoint_schemas is not None:
        if category_id not in keypoint_schemas:
            raise source.error(where, f"category {category_id} has no `keypoints` names in `categories`")
        keypoints = _coco_keypoints(source, ann, len(keypoint_schemas[category_id].names), where)
    return ObjectAnnotation(
        box_xyxy_px=(x, y, x + w, y + h),
        category=categories[category_id]["name"],
        ann_id=ann_id,
        polygons_xy_px=polygons,
        rle=rle,
        keypoints_xyv=keypoints,
        iscrowd=bool(iscrowd),
        area=None if area is None else float(area),
        attributes=_attributes(source, ann, where),
    )


def _coco_segmentation(
    source: _Source, ann: JsonObject, where: str
) -> tuple[tuple[np.ndarray, ...], dict[str, Any] | None]:
    """COCO `segmentation`: a list of flat polygons -> (P, 2) arrays, or an RLE object -> a plain RLE dict."""
    segmentation = source.field(ann, "segmentation", (list, dict), where, default=None)
    if segmentation is None:
        return (), None
    if isinstance(segmentation, dict):
        return (), _coco_rle(source, segmentation, f"{where} segmentation")
    polygons = []
    for k, polygon in enumerate(segmentation):
        if not (
            isinstance(polygon, list) and polygon and len(polygon) % 2 == 0 and all(_is(v, float) for v in polygon)
        ):
            raise source.error(
                where,
                f"`segmentation[{k}]` should be a flat polygon [x1, y1, x2, y2, ...] of pixel coordinates, "
                f"got {_short(polygon)}",
            )
        polygons.append(np.asarray(polygon, dtype=np.float64).reshape(-1, 2))
    return tuple(polygons), None


def _coco_rle(source: _Source, rle: JsonObject, where: str) -> dict[str, Any]:
    """COCO RLE: `size` [h, w] and `counts`, a list of run lengths (uncompressed) or a string (compressed)."""
    size = source.field(rle, "size", list, where)
    if len(size) != 2 or not all(_is(v, int) and v >= 0 for v in size):
        raise source.error(where, f"`size` should be [height, width], got {_short(size)}")
    counts = source.field(rle, "counts", (list, str), where)
    if isinstance(counts, list):
        if not all(_is(c, int) and c >= 0 for c in counts):
            raise source.error(
                where, f"uncompressed `counts` should be run lengths (integers >= 0), got {_short(counts)}"
            )
        height, width = size
        if sum(counts) != height * width:
            raise source.error(
                where,
                f"uncompressed `counts` sum to {sum(counts)}, but size {height}x{width} has {height * width} pixels",
            )
        counts = list(counts)
    return {"size": list(size), "counts": counts}


def _coco_keypoints(source: _Source, ann: JsonObject, num_names: int, where: str) -> np.ndarray:
    """COCO `keypoints`, flat [x, y, v] * K, as a (K, 3) array."""
    flat = source.field(ann, "keypoints", list, where)
    if len(flat) != 3 * num_names or not all(_is(v, float) for v in flat):
        raise source.error(
            where,
            f"`keypoints` should be {num_names} flat [x, y, visibility] triples ({3 * num_names} numbers), "
            f"got {len(flat)} values",
        )
    xyv = np.asarray(flat, dtype=np.float64).reshape(-1, 3)
    if not np.isin(xyv[:, 2], (0, 1, 2)).all():
        raise source.error(where, f"keypoint visibility should be 0, 1 or 2, got {sorted(set(xyv[:, 2].tolist()))}")
    return xyv


def _attributes(source: _Source, ann: JsonObject, where: str) -> dict[str, str]:
    """Extra named properties of an annotation (ShapesWorld: {"color": "red", "size": "small"})."""
    attributes = source.field(ann, "attributes", dict, where, default={})
    for name, value in attributes.items():
        if not isinstance(value, str):
            raise source.error(where, f"`attributes` should map names to strings, got {name!r}: {_short(value)}")
    return dict(attributes)


def _coco_keypoint_schemas(source: _Source, categories: Mapping[int, JsonObject]) -> dict[int, KeypointSchema]:
    """The keypoint schema of every category that has `keypoints` names."""
    schemas = {}
    for category_id, category in categories.items():
        where = f"category {category_id}"
        names = source.field(category, "keypoints", list, where, default=None)
        if names is None:
            continue
        if not all(isinstance(name, str) for name in names):
            raise source.error(where, f"`keypoints` should be a list of names, got {_short(names)}")
        skeleton = source.field(category, "skeleton", list, where, default=[])
        limbs = []
        for limb in skeleton:
            if not (
                isinstance(limb, list) and len(limb) == 2 and all(_is(i, int) and 1 <= i <= len(names) for i in limb)
            ):
                raise source.error(
                    where, f"`skeleton` should hold pairs of 1-based keypoint indices in 1..{len(names)}, got {limb!r}"
                )
            limbs.append((limb[0] - 1, limb[1] - 1))
        schemas[category_id] = KeypointSchema(names=tuple(names), skeleton=tuple(limbs))
    return schemas


def _image_sample(task: Task, image: _CocoImage, image_dir: Path, source: str, **annotations: Any) -> Sample:
    return Sample(
        task=task,
        image_path=image_dir / image.file_name,
        image_id=image.image_id,
        width=image.width,
        height=image.height,
        source=source,
        **annotations,
    )


def read_coco_instances(
    annotation_path: PathLike,
    image_dir: PathLike,
    bad: list[str] | None = None,
    category_ids: dict[str, int] | None = None,
) -> list[Sample]:
    """Reads a COCO instances JSON (e.g. `instances_val2017.json`).

    Boxes are converted from COCO's [x, y, width, height] to (x1, y1, x2, y2) pixels; polygon segmentations
    become (P, 2) arrays, RLE segmentations (crowds) are kept as {"size": [h, w], "counts": list | str}.
    An annotation's `attributes` object, when present, is kept in `ObjectAnnotation.attributes`.

    Args:
        annotation_path: the JSON file.
        image_dir: the folder of the images the file's `file_name`s name.
        bad: a list: malformed annotations are left out, each one's error (file and record) appended to it;
            None: the first raises `DatasetFormatError`.
        category_ids: a dict: filled with the file's category ids by name, in file order (the class vocabulary,
            categories no annotation uses included).

    Returns:
        One `Task.DETECTION` sample per image, in file order, including images with no annotations;
        objects sorted by annotation id.
    """
    source, root = _open_json_object(annotation_path, _COCO_INSTANCES)
    images = _coco_images(source, root)
    categories = _coco_categories(source, root)
    _named(categories, category_ids)
    objects: dict[int, list[ObjectAnnotation]] = defaultdict(list)
    for ann in _coco_annotations(source, root, images, bad):
        found = _skipping(bad, lambda ann=ann: _coco_object(source, ann, categories))
        if found is not None:
            objects[ann["image_id"]].append(found)
    return [
        _image_sample(Task.DETECTION, image, Path(image_dir), "coco_instances", objects=tuple(objects[image_id]))
        for image_id, image in images.items()
    ]


def read_coco_keypoint_schema(annotation_path: PathLike) -> KeypointSchema:
    """Reads the keypoint names and skeleton of a COCO person_keypoints JSON.

    Args:
        annotation_path: the JSON file; exactly one keypoint schema among its categories (COCO: person).

    Returns:
        The schema, with the skeleton's indices made 0-based.
    """
    source, root = _open_json_object(annotation_path, _COCO_KEYPOINTS)
    schemas = set(_coco_keypoint_schemas(source, _coco_categories(source, root)).values())
    if len(schemas) != 1:
        raise source.error(
            "categories", f"expected one keypoint schema (`keypoints` names and `skeleton`), found {len(schemas)}"
        )
    return schemas.pop()


def read_coco_keypoints(
    annotation_path: PathLike,
    image_dir: PathLike,
    bad: list[str] | None = None,
    category_ids: dict[str, int] | None = None,
) -> list[Sample]:
    """Reads a COCO person_keypoints JSON (e.g. `person_keypoints_val2017.json`).

    Only annotations with `num_keypoints` > 0 become objects, as in COCO keypoint training; crowds and
    people with no labelled keypoint are dropped. Images whose people all lack keypoints therefore come out
    with no objects (although people are in them); drop those samples if they must not count as negatives.

    Args:
        annotation_path: the JSON file.
        image_dir: the folder of the images the file's `file_name`s name.
        bad, category_ids: as for `read_coco_instances`.

    Returns:
        One `Task.KEYPOINTS` sample per image, in file order; each object's `keypoints_xyv` is (K, 3):
        x, y in pixels and COCO visibility (0 unlabelled, 1 occluded, 2 visible), rows in the order of
        `read_coco_keypoint_schema(annotation_path).names`.
    """
    source, root = _open_json_object(annotation_path, _COCO_KEYPOINTS)
    images = _coco_images(source, root)
    categories = _coco_categories(source, root)
    _named(categories, category_ids)
    schemas = _coco_keypoint_schemas(source, categories)
    objects: dict[int, list[ObjectAnnotation]] = defaultdict(list)
    for ann in _coco_annotations(source, root, images, bad):

        def person(ann: JsonObject = ann) -> ObjectAnnotation | None:
            if source.field(ann, "num_keypoints", int, f"annotation {ann['id']}") > 0:
                return _coco_object(source, ann, categories, schemas)
            return None

        found = _skipping(bad, person)
        if found is not None:
            objects[ann["image_id"]].append(found)
    return [
        _image_sample(Task.KEYPOINTS, image, Path(image_dir), "coco_keypoints", objects=tuple(objects[image_id]))
        for image_id, image in images.items()
    ]


def read_coco_captions(annotation_path: PathLike, image_dir: PathLike, bad: list[str] | None = None) -> list[Sample]:
    """Reads a COCO captions JSON (e.g. `captions_val2017.json`).

    Args:
        annotation_path: the JSON file.
        image_dir: the folder of the images the file's `file_name`s name.
        bad: as for `read_coco_instances`.

    Returns:
        One `Task.CAPTION` sample per image that has captions, in file order, with all its captions
        (stripped of surrounding whitespace) in annotation id order. Images without captions are skipped.
    """
    source, root = _open_json_object(annotation_path, _COCO_CAPTIONS)
    images = _coco_images(source, root)
    captions: dict[int, list[str]] = defaultdict(list)
    for ann in _coco_annotations(source, root, images, bad):

        def caption(ann: JsonObject = ann) -> str:
            text = source.field(ann, "caption", str, f"annotation {ann['id']}").strip()
            if not text:
                raise source.error(f"annotation {ann['id']}", "`caption` is empty")
            return text

        found = _skipping(bad, caption)
        if found is not None:
            captions[ann["image_id"]].append(found)
    uncaptioned = len(images) - len(captions)
    if uncaptioned:
        logger.warning("%s: skipped %d images without captions", source.path, uncaptioned)
    return [
        _image_sample(Task.CAPTION, image, Path(image_dir), "coco_captions", captions=tuple(captions[image_id]))
        for image_id, image in images.items()
        if image_id in captions
    ]


# --------------------------------------------------------------------------------------------------------------------
# RefCOCO / RefCOCO+ / RefCOCOg.

_REFS = "a RefCOCO refs file (a pickled or JSON list of refs with `ref_id`, `ann_id`, `image_id`, `split`, `sentences`)"
_PICKLE_SAFE_BUILTINS = frozenset({"dict", "list", "tuple", "set", "frozenset", "str", "int", "float"})


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles plain data only.

    Unpickling calls whatever global the file names (that is how `os.system` gets run from a crafted
    pickle), so every global except the builtin containers, str, int and float is refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 pickles (the original refs(unc).p) name the builtins module `__builtin__`.
        if module in ("builtins", "__builtin__") and name in _PICKLE_SAFE_BUILTINS:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(
            f"refused to load the global `{module}.{name}`: a refs pickle holds only lists, dicts, strings and "
            "numbers, and loading anything else could run code"
        )


def _load_refs(path: PathLike) -> tuple[_Source, list[JsonObject]]:
    """A refs file: JSON when its name ends in `.json`, otherwise a pickle (loaded as plain data only)."""
    path = Path(path)
    if path.suffix == ".json":
        source, refs = _open_json(path, _REFS)
    else:
        source = _Source(_existing_file(path, _REFS))
        try:
            with source.path.open("rb") as f:
                # Python 2 pickles store text as bytes; RefCOCO's is ASCII, and UTF-8 decodes ASCII.
                refs = _PlainDataUnpickler(f, encoding="utf-8").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
            raise DatasetFormatError(f"{source.path}: cannot load as {_REFS}: {e}") from e
    if not isinstance(refs, list):
        raise source.error("top level", f"should be a list of refs, got {type(refs).__name__}")
    for i, ref in enumerate(refs):
        source.mapping(ref, f"refs[{i}]")
    return source, refs


def read_refcoco(
    refs_path: PathLike, instances_path: PathLike, image_dir: PathLike, split: str | None = None
) -> list[Sample]:
    """Reads RefCOCO / RefCOCO+ / RefCOCOg: a refs file plus the COCO instances JSON of the same images.

    `refs(unc).p` (or `refs(umd).p`, `refs(google).p`) is a Python pickle. It is loaded with a restricted
    unpickler that only rebuilds builtin containers, str, int and float and refuses any other global, so a
    crafted pickle cannot run code. A JSON file holding the same list (`refs.json`) is read as JSON.

    Args:
        refs_path: the refs file; `.json` is read as JSON, anything else as a pickle.
        instances_path: the `instances.json` beside it (COCO instances; its `file_name`s name the images,
            not the refs' `file_name`, which carries an extra suffix).
        image_dir: the folder of the images (COCO train2014).
        split: keep only refs of this split (RefCOCO/RefCOCO+: train, val, testA, testB; RefCOCOg umd:
            train, val, test); None keeps all.

    Returns:
        One `Task.GROUNDING` sample per ref, in file order: `expressions` are its sentences' `sent` strings,
        `objects` is the referred annotation.

    Raises:
        ValueError: `split` is given and no ref is in it (the message lists the file's splits).
    """
    refs_source, refs = _load_refs(refs_path)
    source, root = _open_json_object(instances_path, _COCO_INSTANCES)
    images = _coco_images(source, root)
    categories = _coco_categories(source, root)
    annotations = {ann["id"]: ann for ann in _coco_annotations(source, root, images)}
    splits: set[str] = set()
    samples = []
    for i, ref in enumerate(refs):
        ref_id = refs_source.field(ref, "ref_id", int, f"refs[{i}]")
        where = f"ref {ref_id}"
        ref_split = refs_source.field(ref, "split", str, where)
        splits.add(ref_split)
        if split is not None and ref_split != split:
            continue
        ann_id = refs_source.field(ref, "ann_id", int, where)
        image_id = refs_source.field(ref, "image_id", int, where)
        if ann_id not in annotations:
            raise refs_source.error(where, f"ann_id {ann_id} is not an annotation of {source.path}")
        if annotations[ann_id]["image_id"] != image_id:
            raise refs_source.error(
                where, f"image_id {image_id}, but annotation {ann_id} is on image {annotations[ann_id]['image_id']}"
            )
        expressions = tuple(
            refs_source.field(sentence, "sent", str, f"{where} sentences[{k}]")
            for k, sentence in enumerate(refs_source.objects(ref, "sentences", where))
        )
        if not expressions:
            raise refs_source.error(where, "`sentences` is empty (expected at least one referring expression)")
        samples.append(
            _image_sample(
                Task.GROUNDING,
                images[image_id],
                Path(image_dir),
                "refcoco",
                objects=(_coco_object(source, annotations[ann_id], categories),),
                expressions=expressions,
            )
        )
    if split is not None and not samples:
        raise ValueError(f"{refs_source.path}: no ref is in split {split!r}; the file's splits are {sorted(splits)}")
    return samples


# --------------------------------------------------------------------------------------------------------------------
# VQAv2.

_VQA_QUESTIONS = "a VQAv2 questions JSON (v2_OpenEnded_mscoco_*_questions.json with `questions`)"
_VQA_ANNOTATIONS = "a VQAv2 annotations JSON (v2_mscoco_*_annotations.json with `annotations`)"


def _image_namer(pattern: str | Callable[[int], str], subtype: str | None, source: _Source) -> Callable[[int], str]:
    """Image id -> file name, from a callable or a format string with `{image_id}` (and optionally `{subtype}`)."""
    if callable(pattern):
        return pattern
    fields = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    if "image_id" not in fields or not fields <= {"image_id", "subtype"}:
        raise ValueError(
            f"image_name_pattern {pattern!r} should use {{image_id}} and optionally {{subtype}}, uses {sorted(fields)}"
        )
    if "subtype" in fields and subtype is None:
        raise source.error(
            "top level", f"missing `data_subtype` (e.g. 'val2014'), which image_name_pattern {pattern!r} needs"
        )
    return lambda image_id: pattern.format(image_id=image_id, subtype=subtype)


def _vqa_answers(path: PathLike) -> tuple[str | None, dict[int, JsonObject]]:
    """The annotations file's `data_subtype` and its annotations by question id."""
    source, root = _open_json_object(path, _VQA_ANNOTATIONS)
    subtype = source.field(root, "data_subtype", str, "top level", default=None)
    by_question: dict[int, JsonObject] = {}
    for i, ann in enumerate(source.objects(root, "annotations", "top level")):
        question_id = source.field(ann, "question_id", int, f"annotations[{i}]")
        where = f"question {question_id}"
        if question_id in by_question:
            raise source.error(where, "duplicate question_id")
        source.field(ann, "image_id", int, where)
        for k, answer in enumerate(source.objects(ann, "answers", where)):
            source.field(answer, "answer", str, f"{where} answers[{k}]")
        source.field(ann, "answer_type", str, where, default=None)
        source.field(ann, "question_type", str, where, default=None)
        by_question[question_id] = ann
    return subtype, by_question


def read_vqav2(
    questions_path: PathLike,
    annotations_path: PathLike | None,
    image_dir: PathLike,
    image_name_pattern: str | Callable[[int], str] = COCO2014_IMAGE_NAME,
) -> list[Sample]:
    """Reads VQAv2: a questions JSON and, except for test / test-dev, its annotations JSON.

    VQAv2 files store image ids, not file names: the file name comes from `image_name_pattern`.

    Args:
        questions_path: `v2_OpenEnded_mscoco_<subtype>_questions.json`.
        annotations_path: `v2_mscoco_<subtype>_annotations.json`, or None (test-dev has none).
        image_dir: the folder of the images.
        image_name_pattern: a callable image_id -> file name, or a format string using `{image_id}` and
            optionally `{subtype}` (the questions file's `data_subtype`). Default: COCO 2014's
            "COCO_{subtype}_{image_id:012d}.jpg", e.g. COCO_val2014_000000262148.jpg.

    Returns:
        One `Task.VQA` sample per question, in file order; `qa.answers` holds the human answers
        (ten in VQAv2), empty without an annotations file.
    """
    source, root = _open_json_object(questions_path, _VQA_QUESTIONS)
    subtype = source.field(root, "data_subtype", str, "top level", default=None)
    image_name = _image_namer(image_name_pattern, subtype, source)
    questions = source.objects(root, "questions", "top level")
    annotations: dict[int, JsonObject] | None = None
    if annotations_path is not None:
        answers_subtype, annotations = _vqa_answers(annotations_path)
        if None not in (subtype, answers_subtype) and subtype != answers_subtype:
            raise DatasetFormatError(
                f"{questions_path} is {subtype} but {annotations_path} is {answers_subtype}; expected the same split"
            )
    samples = []
    seen: set[int] = set()
    unanswered = []
    for i, entry in enumerate(questions):
        question_id = source.field(entry, "question_id", int, f"questions[{i}]")
        where = f"question {question_id}"
        if question_id in seen:
            raise source.error(where, "duplicate question_id")
        seen.add(question_id)
        image_id = source.field(entry, "image_id", int, where)
        question = source.field(entry, "question", str, where)
        ann: JsonObject = {}  # no annotations file: no answers
        if annotations is not None:
            if question_id not in annotations:
                unanswered.append(question_id)
                continue
            ann = annotations[question_id]
            if ann["image_id"] != image_id:
                raise DatasetFormatError(
                    f"{annotations_path}: question {question_id}: image_id {ann['image_id']}, "
                    f"but {questions_path} puts it on image {image_id}"
                )
        qa = QuestionAnswer(
            question=question,
            answers=tuple(answer["answer"] for answer in ann.get("answers", ())),
            question_id=question_id,
            answer_type=ann.get("answer_type"),
            question_type=ann.get("question_type"),
        )
        name = image_name(image_id)
        if not isinstance(name, str):
            raise TypeError(f"image_name_pattern returned {_short(name)} for image {image_id}; expected a file name")
        samples.append(
            Sample(task=Task.VQA, image_path=Path(image_dir) / name, image_id=image_id, qa=qa, source="vqav2")
        )
    if unanswered:
        raise DatasetFormatError(
            f"{annotations_path}: no annotation for {len(unanswered)} questions of {questions_path}, "
            f"e.g. question_id {unanswered[:5]}"
        )
    return samples


# --------------------------------------------------------------------------------------------------------------------
# LLaVA conversations.

_LLAVA = "a LLaVA conversation JSON (a list of {`id`, `image`, `conversations`: [{`from`, `value`}]})"
_LLAVA_ROLES: dict[str, Literal["user", "assistant"]] = {"human": "user", "gpt": "assistant"}


def _llava_conversation(source: _Source, entry: JsonObject, where: str) -> tuple[Turn, ...]:
    """Checked turns: human and gpt alternate starting with human, end with gpt, `<image>` at most once."""
    messages = source.objects(entry, "conversations", where)
    if not messages:
        raise source.error(where, "`conversations` is empty")
    turns = []
    for k, message in enumerate(messages):
        speaker = source.field(message, "from", str, f"{where} conversations[{k}]")
        if speaker not in _LLAVA_ROLES:
            raise source.error(where, f"conversations[{k}]: `from` should be 'human' or 'gpt', got {speaker!r}")
        expected = "human" if k % 2 == 0 else "gpt"
        if speaker != expected:
            raise source.error(
                where, f"conversations[{k}] is from {speaker!r}; turns should alternate human, gpt, ... from human"
            )
        turns.append(
            Turn(role=_LLAVA_ROLES[speaker], text=source.field(message, "value", str, f"{where} conversations[{k}]"))
        )
    if turns[-1].role != "assistant":
        raise source.error(where, "the last turn is from 'human'; every human turn should have a gpt answer")
    marks = sum(turn.text.count("<image>") for turn in turns)
    if marks > 1:
        raise source.error(where, f"`<image>` appears {marks} times; expected at most once")
    if any("<image>" in turn.text for turn in turns if turn.role == "assistant"):
        raise source.error(where, "`<image>` is in a gpt turn; it belongs in a human turn")
    return tuple(turns)


def read_llava(json_path: PathLike, image_dir: PathLike) -> list[Sample]:
    """Reads a LLaVA conversation JSON (e.g. `llava_instruct_150k.json`, `llava_v1_5_mix665k.json`).

    `human` turns become role "user", `gpt` turns role "assistant". Text-only entries (no `image`) are
    skipped, since a Sample needs an image; how many is logged as a warning.

    Args:
        json_path: the JSON file.
        image_dir: the folder the entries' `image` paths are relative to.

    Returns:
        One `Task.CHAT` sample per entry with an image, in file order, with `image_id` the entry's `id`.
    """
    source, entries = _open_json(json_path, _LLAVA)
    if not isinstance(entries, list):
        raise source.error("top level", f"should be a list of conversations, got {type(entries).__name__}")
    samples = []
    text_only = 0
    for i, entry in enumerate(entries):
        entry = source.mapping(entry, f"entries[{i}]")
        entry_id = source.field(entry, "id", (str, int), f"entries[{i}]")
        where = f"entries[{i}] (id {entry_id!r})"
        image = source.field(entry, "image", str, where, default=None)
        if image is None:
            text_only += 1
            continue
        conversation = _llava_conversation(source, entry, where)
        samples.append(
            Sample(
                task=Task.CHAT,
                image_path=Path(image_dir) / image,
                image_id=entry_id,
                conversation=conversation,
                source="llava",
            )
        )
    if text_only:
        logger.warning(
            "%s: skipped %d text-only conversations (no `image`; a Sample needs one)", source.path, text_only
        )
    return samples


# --------------------------------------------------------------------------------------------------------------------
# Semantic segmentation: an image folder and a folder of label PNGs (ADE20K, Pascal VOC).

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_LABEL_PNG = "a single-channel PNG of class ids (L or palette P mode; 255 = ignore)"


def read_semantic_masks(
    image_dir: PathLike, mask_dir: PathLike, image_suffix: str | None = None, mask_suffix: str = ".png"
) -> list[Sample]:
    """Pairs each image with the label PNG of the same stem (ADE20K / Pascal VOC layout).

    Args:
        image_dir: the folder of images (ADE20K: images/validation; VOC: JPEGImages).
        mask_dir: the folder of label PNGs (ADE20K: annotations/validation; VOC: SegmentationClass),
            single-channel class ids with 255 = ignore (read them with `load_label_map`).
        image_suffix: the images' suffix; None takes .jpg, .jpeg and .png.
        mask_suffix: the label files' suffix.

    Returns:
        One `Task.SEMANTIC_SEGMENTATION` sample per image, sorted by file name, with `image_id` the stem.

    Raises:
        FileNotFoundError: a folder is missing, it holds no image, or some image has no label PNG
            (the message lists a few).
    """
    image_dir = _existing_dir(image_dir, "the folder of images")
    mask_dir = _existing_dir(mask_dir, "the folder of label PNGs")
    suffixes = (image_suffix.lower(),) if image_suffix else _IMAGE_SUFFIXES
    images = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not images:
        raise FileNotFoundError(f"{image_dir}: no image ending in {' / '.join(suffixes)}")
    stems: dict[str, Path] = {}
    for image in images:
        if image.stem in stems:
            raise DatasetFormatError(
                f"{image_dir}: {stems[image.stem].name} and {image.name} share the stem of one mask"
            )
        stems[image.stem] = image
    missing = [image.name for image in images if not (mask_dir / f"{image.stem}{mask_suffix}").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{mask_dir}: no label file <stem>{mask_suffix} for {len(missing)} of {len(images)} images in {image_dir}, "
            f"e.g. {', '.join(missing[:5])}"
        )
    return [
        Sample(
            task=Task.SEMANTIC_SEGMENTATION,
            image_path=image,
            image_id=image.stem,
            semantic_mask_path=mask_dir / f"{image.stem}{mask_suffix}",
            source="semantic_masks",
        )
        for image in images
    ]


def load_label_map(path: PathLike) -> np.ndarray:
    """Loads a label PNG of per-pixel class ids.

    Accepts single-channel PNGs (L; 16-bit only if its ids fit in 0..255) and palette PNGs (P, as in
    Pascal VOC), whose palette indices are the labels. Refuses colour (RGB/RGBA) masks: their colours are
    not class ids until mapped with the dataset's palette.

    Args:
        path: the PNG.

    Returns:
        (H, W) uint8 class ids; 255 = ignore.
    """
    path = _existing_file(path, _LABEL_PNG)
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in ("L", "P", "1"):
                return np.array(image, dtype=np.uint8)
            if mode == "I" or mode.startswith("I;16"):
                labels = np.array(image)
                if labels.size and (labels.min() < 0 or labels.max() > 255):
                    raise DatasetFormatError(
                        f"{path}: a {mode} label map with ids {labels.min()}..{labels.max()}; expected ids in 0..255"
                    )
                return labels.astype(np.uint8)
    except UnidentifiedImageError as e:
        raise DatasetFormatError(f"{path}: not an image; expected {_LABEL_PNG}") from e
    raise DatasetFormatError(
        f"{path}: a {mode} image; expected {_LABEL_PNG}. A colour-coded mask must first be mapped to class ids "
        "with its dataset's palette"
    )
