import hashlib
import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from visionllm.cli import main
from visionllm.data.readers import load_label_map
from visionllm.data.shapes import language as lang
from visionllm.data.shapes.dataset import ShapesWorldLayout, generate_shapesworld, make_image
from visionllm.data.shapes.inspect import describe, write_contact_sheet
from visionllm.data.shapes.load import TASKS_ON_DISK, load_split, load_star_keypoints
from visionllm.data.shapes.scene import CATEGORIES, COLORS, ShapesWorldConfig
from visionllm.eval.metrics import coco_metrics, vqa_accuracy
from visionllm.formats.keypoints import STAR_KEYPOINT_NAMES
from visionllm.formats.tasks import Task
from visionllm.ops.polygons import polygons_to_mask, rle_to_mask

HOLDOUT = (("purple", "star"), ("green", "hexagon"))
CONFIG = ShapesWorldConfig(image_size=96, person_probability=0.3, holdout_pairs=HOLDOUT)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return generate_shapesworld(root, train=40, val=20, config=CONFIG, seed=7, progress=False)


def _json(path):
    return json.loads(path.read_text())


def _facts(instances):
    names = {c["id"]: c["name"] for c in instances["categories"]}
    by_image = {}
    for ann in instances["annotations"]:
        x, y, w, h = ann["bbox"]
        facts = lang.ObjectFacts(
            names[ann["category_id"]], ann["attributes"]["color"], ann["attributes"]["size"], (x, y, x + w, y + h)
        )
        by_image.setdefault(ann["image_id"], []).append(facts)
    return by_image


def test_every_file_is_written_and_every_reader_loads_it(world: ShapesWorldLayout):
    card = _json(world.card)
    assert card["splits"]["train"]["images"] == 40 and card["splits"]["val"]["images"] == 20
    for split in ("train", "val"):
        n = card["splits"][split]["images"]
        for task in TASKS_ON_DISK:
            samples = load_split(world.root, split, task)
            assert samples, (split, task)
            assert all(s.image_path.exists() for s in samples), (split, task)
        assert len(load_split(world.root, split, Task.DETECTION)) == n
        assert len(load_split(world.root, split, Task.CAPTION)) == n
        assert all(len(s.captions) == 5 for s in load_split(world.root, split, Task.CAPTION))
        vqa = load_split(world.root, split, Task.VQA)
        assert all(len(s.qa.answers) == 10 for s in vqa)
        assert {s.qa.answer_type for s in vqa} >= {"number", "yes/no", "other"}
        chats = load_split(world.root, split, Task.CHAT)
        assert all(c.conversation[0].role == "user" and "<image>" in c.conversation[0].text for c in chats)
        assert len(_json(world.regions(split))["regions"]) == card["splits"][split]["objects"]
        assert len(_json(world.generation(split))["prompts"]) == n
        edits = _json(world.edits(split))["edits"]
        assert edits and all((world.root / e["edited_image"]).exists() for e in edits)
    with pytest.raises(ValueError, match="no reader for editing"):
        load_split(world.root, "val", Task.EDITING)


def test_generation_is_deterministic_and_independent_of_count(world, tmp_path):
    other = generate_shapesworld(tmp_path / "again", train=5, val=3, config=CONFIG, seed=7, progress=False)
    for split, image_id in (("train", 3), ("val", 1_000_002)):
        a = world.image(split, image_id).read_bytes()
        b = other.image(split, image_id).read_bytes()
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    first = make_image(7, "val", 1, CONFIG)
    assert first.captions == make_image(7, "val", 1, CONFIG).captions
    assert make_image(8, "val", 1, CONFIG).captions != first.captions or not np.array_equal(
        make_image(8, "val", 1, CONFIG).rendered.image, first.rendered.image
    )


def test_ground_truth_scores_perfectly_under_the_standard_metrics(world):
    """Annotations are consistent: GT boxes, polygons and keypoints submitted as predictions score AP 1."""
    for name, iou_type in (("instances", "bbox"), ("instances", "segm"), ("keypoints", "keypoints")):
        gt = _json(world.instances("val") if name == "instances" else world.keypoints("val"))
        results = [{**a, "score": 1.0} for a in gt["annotations"]]
        assert coco_metrics(gt, results, iou_type)["AP"] == pytest.approx(1.0), iou_type


def test_polygons_are_the_visible_pixels_and_the_semantic_map_agrees(world):
    instances = _json(world.instances("val"))
    names = {c["id"]: c["name"] for c in instances["categories"]}
    for image in instances["images"][:10]:
        labels = load_label_map(world.semantic_dir("val") / image["file_name"])
        anns = [a for a in instances["annotations"] if a["image_id"] == image["id"]]
        for ann in anns:
            mask = polygons_to_mask(
                [np.array(p).reshape(-1, 2) for p in ann["segmentation"]], image["height"], image["width"]
            )
            assert mask.sum() == ann["area"]
            assert (
                labels[mask] == ann["category_id"]
            ).mean() > 0.9  # people's polygons also cover the gaps between limbs
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
            assert names[ann["category_id"]] in CATEGORIES
            assert ann["attributes"]["color"] in COLORS


def test_images_show_the_annotated_colours(world):
    instances = _json(world.instances("val"))
    for image in instances["images"][:8]:
        pixels = np.asarray(Image.open(world.image("val", image["id"])).convert("RGB")).astype(int)
        for ann in (a for a in instances["annotations"] if a["image_id"] == image["id"]):
            mask = polygons_to_mask(
                [np.array(p).reshape(-1, 2) for p in ann["segmentation"]], image["height"], image["width"]
            )
            if ann["category_id"] == CATEGORIES.index("person") + 1:
                continue
            mean = pixels[mask].mean(axis=0)
            nearest = min(COLORS, key=lambda c: np.abs(np.array(COLORS[c]) - mean).sum())
            assert nearest == ann["attributes"]["color"]


def test_keypoints_follow_coco(world):
    data = _json(world.keypoints("val"))
    (person,) = data["categories"]
    assert person["name"] == "person" and len(person["keypoints"]) == 17 and len(person["skeleton"]) == 19
    assert data["annotations"], "the fixture world should contain people"
    for ann in data["annotations"]:
        kp = np.array(ann["keypoints"]).reshape(17, 3)
        assert set(kp[:, 2]) <= {0, 1, 2}
        assert ann["num_keypoints"] == (kp[:, 2] > 0).sum()
        shown = kp[kp[:, 2] > 0]
        assert ((shown[:, :2] >= 0) & (shown[:, :2] <= 96)).all()
        nose, left_ankle = kp[0], kp[15]
        assert nose[1] < left_ankle[1]  # standing upright
        assert kp[5, 0] > kp[6, 0]  # facing the viewer: the left shoulder is on the image's right


def test_star_keypoints_are_the_tips_from_the_top_clockwise(world):
    data = _json(world.star_keypoints("val"))
    (star,) = data["categories"]
    assert star["name"] == "star" and star["keypoints"] == list(STAR_KEYPOINT_NAMES) and len(star["skeleton"]) == 5
    stars = [a for a in _json(world.instances("val"))["annotations"] if a["category_id"] == star["id"]]
    assert len(data["annotations"]) == len(stars) > 0  # every star, with the same id
    assert {a["id"] for a in data["annotations"]} == {a["id"] for a in stars}
    for ann in data["annotations"]:
        kp = np.array(ann["keypoints"]).reshape(5, 3)
        assert ann["num_keypoints"] == (kp[:, 2] > 0).sum()
        x, y, w, h = ann["bbox"]
        shown = kp[kp[:, 2] == 2]
        assert ((shown[:, 0] >= x - 2) & (shown[:, 0] <= x + w + 2)).all()
        assert ((shown[:, 1] >= y - 2) & (shown[:, 1] <= y + h + 2)).all()
        if (kp[:, 2] > 0).all():
            assert kp[0, 1] == kp[:, 1].min()  # the first is the topmost tip
            centre = kp[:, :2].mean(0)
            angles = np.unwrap(np.arctan2(kp[:, 1] - centre[1], kp[:, 0] - centre[0]))
            assert (np.diff(angles) > 0).all()  # clockwise on screen (y points down)
    assert len(load_star_keypoints(world.root, "val")) == len({a["image_id"] for a in data["annotations"]})


def test_held_out_pairs_never_appear_in_train(world):
    instances = _json(world.instances("train"))
    names = {c["id"]: c["name"] for c in instances["categories"]}
    pairs = {(a["attributes"]["color"], names[a["category_id"]]) for a in instances["annotations"]}
    assert not pairs & set(HOLDOUT)
    assert "make the star purple" not in json.dumps(_json(world.edits("train")))
    # The same config draws them in val.
    val_pairs = {(f.color, f.category) for i in range(200) for f in make_image(7, "val", i, CONFIG).facts}
    assert set(HOLDOUT) <= val_pairs


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("red circle", ("red", "circle", None)),
        ("circles", (None, "circle", None)),
        ("purple thing", ("purple", None, None)),
        ("the big blue star", ("blue", "star", "large")),
        ("person", (None, "person", None)),
        ("people", (None, "person", None)),
        ("cat", None),
        ("red blue circle", None),
        ("", None),
    ],
)
def test_phrase_parsing(phrase, expected):
    parsed = lang.parse_phrase(phrase)
    assert (parsed.color, parsed.category, parsed.size) == expected if expected else parsed is None


def test_open_phrases_map_to_their_objects(world):
    instances = _json(world.instances("val"))
    phrases = ["red circle", "circle", "purple thing", "shape", "thing", "large shape", "person", "cat"]
    view = lang.coco_phrase_view(instances, phrases)
    counts = Counter(a["category_id"] for a in view["annotations"])
    names = {c["id"]: c["name"] for c in instances["categories"]}
    anns = instances["annotations"]

    def count(test):
        return sum(bool(test(a["attributes"]["color"], names[a["category_id"]], a["attributes"]["size"])) for a in anns)

    assert counts[1] == count(lambda c, s, z: (c, s) == ("red", "circle"))
    assert counts[2] == count(lambda c, s, z: s == "circle")
    assert counts[3] == count(lambda c, s, z: c == "purple")
    assert counts[4] == count(lambda c, s, z: s != "person")
    assert counts[5] == len(anns)
    assert counts[6] == count(lambda c, s, z: s != "person" and z == "large")
    assert counts[7] == count(lambda c, s, z: s == "person")
    assert counts[8] == 0
    assert [c["name"] for c in view["categories"]] == phrases
    assert coco_metrics(view, [{**a, "score": 1.0} for a in view["annotations"]], "bbox")["AP"] == pytest.approx(1.0)


def test_counting_answers_and_captions_are_true(world):
    instances = _json(world.instances("val"))
    facts = _facts(instances)
    checked = 0
    for sample in load_split(world.root, "val", Task.VQA):
        match = re.fullmatch(r"How many (.+) are there\?", sample.qa.question)
        if not match:
            continue
        objects = facts.get(sample.image_id, [])
        phrase = match.group(1)
        expected = sum(lang.phrase_matches(phrase, o) for o in objects)
        assert Counter(sample.qa.answers).most_common(1)[0][0] == str(expected), (phrase, sample.image_id)
        checked += 1
    assert checked >= 10
    for sample in load_split(world.root, "val", Task.CAPTION):
        objects = facts.get(sample.image_id, [])
        text = " ".join(sample.captions)
        assert all(o.color in text for o in objects)


def test_referring_expressions_name_exactly_their_object(world):
    instances = _json(world.instances("val"))
    facts = _facts(instances)
    ids = {}
    for ann in instances["annotations"]:
        ids.setdefault(ann["image_id"], []).append(ann["id"])
    refs = load_split(world.root, "val", Task.GROUNDING)
    assert len(refs) >= 20
    simple = 0
    for ref in refs:
        target = ids[ref.image_id].index(ref.objects[0].ann_id)
        objects = facts[ref.image_id]
        for sentence in ref.expressions:
            if lang.parse_phrase(sentence) is not None:  # attribute-only expressions: check uniqueness directly
                assert [i for i, o in enumerate(objects) if lang.phrase_matches(sentence, o)] == [target], sentence
                simple += 1
    assert simple >= 10


def test_vqa_ground_truth_scores_one_under_the_official_accuracy(world):
    annotations = _json(world.vqa_annotations("val"))["annotations"]
    predictions = {a["question_id"]: a["multiple_choice_answer"] for a in annotations}
    assert vqa_accuracy(predictions, annotations)["accuracy"] > 0.95


def test_region_prompts_lie_on_their_object(world):
    instances = {a["id"]: a for a in _json(world.instances("val"))["annotations"]}
    regions = _json(world.regions("val"))["regions"]
    assert {r["prompt"]["type"] for r in regions} == {"point", "box", "scribble", "mask"}
    for region in regions:
        ann = instances[region["ann_id"]]
        mask = polygons_to_mask([np.array(p).reshape(-1, 2) for p in ann["segmentation"]], 96, 96)
        prompt = region["prompt"]
        if prompt["type"] in ("point", "scribble"):
            points = [prompt["point_xy_px"]] if prompt["type"] == "point" else prompt["points_xy_px"]
            assert all(mask[int(y), int(x)] for x, y in points)
        elif prompt["type"] == "mask":
            assert (rle_to_mask(prompt["segmentation"]) == mask).mean() > 0.97
        assert ann["attributes"]["color"] in region["caption"]


def test_edits_change_the_image(world):
    for edit in _json(world.edits("val"))["edits"][:10]:
        source = np.asarray(Image.open(world.root / edit["input_image"]))
        target = np.asarray(Image.open(world.root / edit["edited_image"]))
        assert source.shape == target.shape
        assert (source != target).any(axis=-1).sum() > 10, edit["edit_prompt"]
        assert edit["edit_prompt"].startswith(("make ", "remove "))


def test_describe_and_contact_sheet(world, tmp_path):
    text = describe(world.root)
    assert "val: 20 images" in text and "held out of train: purple star, green hexagon" in text
    sheet = write_contact_sheet(world.root, "val", tmp_path / "sheet.png", count=4)
    image = Image.open(sheet)
    assert image.width > 4 * 96 * 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "20"], "--size: must be between 64 and 512, got 20"),
        (["--train", "-1"], "--train: must be >= 0"),
        (["--person-probability", "nan"], "--person-probability: must be a number between 0 and 1"),
    ],
)
def test_cli_reports_bad_arguments(tmp_path, capsys, args, message):
    assert main(["data", "shapes", "--out", str(tmp_path / "w"), "--quiet", *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_unknown_holdout_pairs(tmp_path, capsys):
    assert main(["data", "shapes", "--out", str(tmp_path / "w"), "--holdout", "pink star"]) == 2
    assert "not 'COLOR SHAPE'" in capsys.readouterr().err


def test_cli_writes_a_dataset(tmp_path, capsys):
    code = main(
        ["data", "shapes", "--out", str(tmp_path / "w"), "--train", "3", "--val", "2", "--size", "64", "--quiet"]
    )
    assert code == 0
    assert "train: 3 images" in capsys.readouterr().out
    assert main(["data", "info", str(tmp_path / "nothing")]) == 2
    assert "not a ShapesWorld dataset" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Captions: true references whose object order is one the image shows


def _obj(color, category, box):
    return lang.ObjectFacts(category, color, "medium", box)


FRAMES = ("{} on a grey background", "a grey background with {}", "a picture of {}")

CAPTION_SCENES = [
    pytest.param(
        [
            _obj("blue", "star", (60, 10, 80, 30)),
            _obj("red", "circle", (5, 40, 15, 50)),
            _obj("green", "square", (30, 30, 60, 60)),
        ],
        "a red circle, a green square and a blue star",
        "a green square, a blue star and a red circle",
        id="left-to-right-is-not-drawing-order",
    ),
    pytest.param(
        [
            _obj("red", "circle", (10, 10, 20, 20)),
            _obj("blue", "star", (35, 35, 65, 65)),
            _obj("red", "circle", (70, 10, 80, 20)),
        ],
        "two red circles and a blue star",
        "a blue star and two red circles",
        id="a-plural-sits-at-its-first-member",
    ),
    pytest.param(
        [_obj("orange", "person", (40, 50, 60, 90)), _obj("yellow", "triangle", (45, 5, 55, 15))],
        "a yellow triangle and a person in orange",
        "a person in orange and a yellow triangle",
        id="equal-x-top-first",
    ),
    pytest.param(
        [_obj("purple", "hexagon", (50, 0, 60, 10)), _obj("red", "square", (10, 0, 20, 10))],
        "a red square and a purple hexagon",
        "a red square and a purple hexagon",
        id="equal-areas-left-to-right",
    ),
    pytest.param(
        [
            _obj("blue", "person", (70, 20, 80, 60)),
            _obj("red", "star", (0, 0, 10, 10)),
            _obj("blue", "person", (20, 20, 30, 60)),
            _obj("blue", "person", (45, 20, 55, 60)),
        ],
        "a red star and three people in blue",
        "three people in blue and a red star",
        id="people-plural",
    ),
    pytest.param([_obj("orange", "circle", (0, 0, 10, 10))], "an orange circle", "an orange circle", id="one-object"),
]


@pytest.mark.parametrize(("objects", "left_to_right", "largest_first"), CAPTION_SCENES)
def test_captions_list_objects_left_to_right_then_largest_first(objects, left_to_right, largest_first):
    caps = lang.captions(objects, "grey", np.random.default_rng(0))
    assert len(caps) == 5
    assert caps[:3] == [frame.format(left_to_right) for frame in FRAMES]
    if largest_first != left_to_right:
        assert caps[3] in [frame.format(largest_first) for frame in FRAMES]
    else:  # an order equal to left to right is not listed again as "by size"
        assert all(c in caps[:3] or left_to_right not in c for c in caps[3:])


@pytest.mark.parametrize(("objects", "left_to_right", "largest_first"), CAPTION_SCENES)
def test_captions_are_deterministic_and_ignore_drawing_order(objects, left_to_right, largest_first):
    caps = lang.captions(objects, "grey", np.random.default_rng(3))
    assert lang.captions(objects, "grey", np.random.default_rng(3)) == caps
    for seed in range(3):
        shuffled = [objects[k] for k in np.random.default_rng(seed).permutation(len(objects))]
        assert lang.captions(shuffled, "grey", np.random.default_rng(3)) == caps


@pytest.mark.parametrize("count", [1, 3, 5, 8])
def test_captions_count(count):
    objects = CAPTION_SCENES[0].values[0]
    caps = lang.captions(objects, "grey", np.random.default_rng(5), count=count)
    assert len(caps) == count
    assert caps[:5] == lang.captions(objects, "grey", np.random.default_rng(5))[:count]


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (1, ["an empty grey background"]),
        (
            4,
            [
                "an empty grey background",
                "a grey background with nothing on it",
                "a plain picture of a grey background",
                "an empty grey background",
            ],
        ),
    ],
)
def test_captions_of_an_empty_scene(count, expected):
    assert lang.captions([], "grey", np.random.default_rng(0), count=count) == expected


def _first_seen(keys):
    return list(dict.fromkeys(keys))


def _parse_counted(text):
    """'a red circle, two blue stars and a person in red' -> [("red circle", 1), ("blue stars", 2), ...]."""
    counted = []
    for part in re.split(r", | and ", text):
        first, rest = part.split(" ", 1)
        counted.append((rest, 1 if first in ("a", "an") else lang.NUMBER_WORDS.index(first)))
    return counted


def _listing_groups(text):
    """'a red circle and two blue stars' -> [("red", "circle", 1), ("blue", "star", 2)]."""
    groups = []
    for name, n in _parse_counted(text):
        phrase = lang.parse_phrase(name)
        assert phrase is not None and phrase.color and phrase.category, name
        groups.append((phrase.color, phrase.category, n))
    return groups


def _check_reference(caption, objects):
    """Asserts that a reference is true of the objects; returns its style and, for a listing, the listing."""
    ltr = sorted(objects, key=lambda o: o.center)
    by_size = sorted(ltr, key=lambda o: -o.area)
    listing = re.fullmatch(r"(.+) on an? \w+ background|an? \w+ background with (.+)|a picture of (.+)", caption)
    if listing:
        text = next(g for g in listing.groups() if g)
        groups = _listing_groups(text)
        counts = Counter((o.color, o.category) for o in objects)
        assert {(c, s): n for c, s, n in groups} == counts and len(groups) == len(counts), caption
        order = [(c, s) for c, s, _ in groups]
        ltr_order = _first_seen((o.color, o.category) for o in ltr)
        if order == ltr_order:
            return "left to right", text
        assert order == _first_seen((o.color, o.category) for o in by_size), caption
        return "largest first", text
    counting = re.fullmatch(r"(\w+) objects: (.+)|(an? \w+) alone", caption)
    if counting:
        total, shapes, alone = counting.groups()
        assert (lang.NUMBER_WORDS.index(total) if total else 1) == len(objects), caption
        named = [(lang.parse_phrase(name).category, n) for name, n in _parse_counted(shapes or alone)]
        assert named == list(Counter(o.category for o in ltr).items()), caption
        return "count", None
    a, rel, b = re.fullmatch(r"an? (.+) (above|below|to the left of|to the right of) an? (.+)", caption).groups()
    assert any(
        lang.phrase_matches(a, x) and lang.phrase_matches(b, y) and lang.relation(x, y) == rel
        for x in objects
        for y in objects
        if x is not y
    ), caption
    return "relation", None


def test_every_reference_is_true_and_most_share_the_left_to_right_listing(world):
    facts = _facts(_json(world.instances("val")))
    styles = Counter()
    for sample in load_split(world.root, "val", Task.CAPTION):
        objects = facts.get(sample.image_id, [])
        if not objects:
            assert all("background" in c for c in sample.captions)
            continue
        checked = [_check_reference(c, objects) for c in sample.captions]
        styles.update(style for style, _ in checked)
        assert [style for style, _ in checked[:3]] == ["left to right"] * 3, sample.captions
        assert len({text for _, text in checked[:3]}) == 1, sample.captions
    assert styles["left to right"] >= 3 * 15
    assert styles["largest first"] and styles["count"] and styles["relation"], styles
