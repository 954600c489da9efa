"""The language of ShapesWorld: open class phrases, captions, referring expressions, questions.

Everything here is a pure function of the objects' facts (category, colour, size class, visible box)
and a random generator, so that the text is deterministic by seed and always true of the image.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from visionllm.data.shapes.scene import COLORS, PERSON, SHAPES

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_PLURAL = {**{s: s + "s" for s in SHAPES}, PERSON: "people"}
_SINGULAR_OF = {**{p: s for s, p in _PLURAL.items()}, "persons": PERSON}
_SIZE_WORDS = {
    "small": "small",
    "little": "small",
    "tiny": "small",
    "medium": "medium",
    "large": "large",
    "big": "large",
}
_GENERIC = {"thing", "things", "object", "objects", "item", "items", "one", "ones"}
_SHAPE_GENERIC = {"shape", "shapes"}


@dataclass(frozen=True)
class ObjectFacts:
    """What the language layer knows of an object. box_xyxy_px is the visible part's box."""

    category: str
    color: str
    size: str
    box_xyxy_px: tuple[float, float, float, float]

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box_xyxy_px
        return (x1 + x2) / 2, (y1 + y2) / 2

    @property
    def area(self) -> float:
        """Area of the visible box in square pixels."""
        x1, y1, x2, y2 = self.box_xyxy_px
        return (x2 - x1) * (y2 - y1)


# ---------------------------------------------------------------------------------------------
# Open class phrases


@dataclass(frozen=True)
class Phrase:
    """A class phrase read as constraints: any of color / category / size may be open (None).

    `shapes_only` is set by the word "shape", which does not cover people.
    """

    color: str | None = None
    category: str | None = None
    size: str | None = None
    shapes_only: bool = False

    def matches(self, obj: ObjectFacts) -> bool:
        return (
            (self.color is None or obj.color == self.color)
            and (self.category is None or obj.category == self.category)
            and (self.size is None or obj.size == self.size)
            and not (self.shapes_only and obj.category == PERSON)
        )


def parse_phrase(phrase: str) -> Phrase | None:
    """Read a class phrase such as "red circle", "circles", "purple thing", "large shape".

    Returns None when a word is not part of ShapesWorld's vocabulary (the phrase names nothing
    here, as "cat" would), or when it names two colours or two categories.
    """
    color = category = size = None
    shapes_only = False
    # Articles and "in" ("person in red") carry no constraint.
    words = [w for w in phrase.lower().replace("-", " ").split() if w not in ("the", "a", "an", "in")]
    if not words:
        return None
    for word in words:
        if word in COLORS:
            if color is not None:
                return None
            color = word
        elif word in _SIZE_WORDS:
            size = _SIZE_WORDS[word]
        elif word in SHAPES or word == PERSON or word in _SINGULAR_OF:
            if category is not None:
                return None
            category = _SINGULAR_OF.get(word, word)
        elif word in _SHAPE_GENERIC:
            shapes_only = True
        elif word not in _GENERIC:
            return None
    return Phrase(color, category, size, shapes_only)


def phrase_matches(phrase: str, obj: ObjectFacts) -> bool:
    """Whether a class phrase names an object ("red circle", "circle" and "red thing" all name a red circle)."""
    parsed = parse_phrase(phrase)
    return parsed is not None and parsed.matches(obj)


def all_class_phrases(include_person: bool = True) -> list[str]:
    """Every colour + category phrase ("red circle", ..., "orange person")."""
    categories = (*SHAPES, PERSON) if include_person else SHAPES
    return [f"{c} {s}" for s in categories for c in COLORS]


# ---------------------------------------------------------------------------------------------
# Noun phrases


def noun(category: str, color: str | None = None, count: int = 1, size: str | None = None) -> str:
    """'red circle', 'two red circles', 'person in red', 'three people in blue' (no article for one)."""
    head = category if count == 1 else _PLURAL[category]
    words = [size] if size else []
    if category == PERSON:
        phrase = " ".join([*words, head]) + (f" in {color}" if color else "")
    else:
        phrase = " ".join([*words, *([color] if color else []), head])
    return phrase if count == 1 else f"{number_word(count)} {phrase}"


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(parts: Sequence[str]) -> str:
    parts = list(parts)
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _group_phrase(color: str, category: str, n: int) -> str:
    return noun(category, color, n) if n > 1 else with_article(noun(category, color))


def _listing(ordered: Sequence[ObjectFacts]) -> str:
    """'a red circle, two blue stars and a person in red': identical (colour, category) objects
    merged into one plural at their first member's place in `ordered`."""
    # Counter keeps first-insertion order, so each group sits where its first member is.
    counts = Counter((o.color, o.category) for o in ordered)
    return _join([_group_phrase(color, category, n) for (color, category), n in counts.items()])


# ---------------------------------------------------------------------------------------------
# Spatial relations (on the visible boxes, with a margin so that they are clear to a viewer)


def relation(a: ObjectFacts, b: ObjectFacts, margin: float = 2.0) -> str | None:
    """How a stands to b: 'above', 'below', 'to the left of', 'to the right of', or None if unclear."""
    ax1, ay1, ax2, ay2 = a.box_xyxy_px
    bx1, by1, bx2, by2 = b.box_xyxy_px
    dx = max(bx1 - ax2, ax1 - bx2)  # horizontal gap (negative when overlapping)
    dy = max(by1 - ay2, ay1 - by2)
    if dy >= margin and dy >= dx:
        return "above" if ay2 <= by1 else "below"
    if dx >= margin:
        return "to the left of" if ax2 <= bx1 else "to the right of"
    return None


# ---------------------------------------------------------------------------------------------
# Captions


def left_to_right(objects: Sequence[ObjectFacts]) -> list[ObjectFacts]:
    """The objects by visible box centre x, ties by centre y (top first), then by their order in `objects`."""
    return sorted(objects, key=lambda o: o.center)


def largest_first(objects: Sequence[ObjectFacts]) -> list[ObjectFacts]:
    """The objects by visible box area, largest first, ties in left-to-right order."""
    return sorted(left_to_right(objects), key=lambda o: -o.area)


_LISTING_FRAMES = ("{objects} on a {bg}", "a {bg} with {objects}", "a picture of {objects}")


def captions(objects: Sequence[ObjectFacts], background: str, rng: np.random.Generator, count: int = 5) -> list[str]:
    """`count` true captions of a scene in different styles (COCO has five references per image).

    Every listing of objects is in an order the image shows, never in drawing order: a model cannot
    learn an order it cannot see. The first three captions list the objects left to right, one per
    listing frame ("... on a grey background", "a grey background with ...", "a picture of ..."), so
    that one consistent answer has strong consensus under CIDEr. Then come the objects largest first
    (only when that order differs from left to right), and, in a random order, a count by shape
    ("three objects: two circles and a star", shapes left to right) and a relation between two
    objects when one is clear. Captions repeat in that order when `count` asks for more.

    Args:
        objects: The scene's objects; boxes are the visible parts in pixels.
        background: The background's kind ("grey", "gradient", ...).
        rng: Draws the relation, the by-size caption's frame and the order of the last styles.
        count: How many captions to return.

    Returns:
        `count` captions, the first being the left-to-right listing "... on a {background} background".
    """
    bg = f"{background} background"
    if not objects:
        base = [f"an empty {bg}", f"a {bg} with nothing on it", f"a plain picture of a {bg}"]
        return [base[i % len(base)] for i in range(count)]
    ordered = left_to_right(objects)
    listing = _listing(ordered)
    styles = [frame.format(objects=listing, bg=bg) for frame in _LISTING_FRAMES]
    by_size = _listing(largest_first(objects))
    if by_size != listing:
        styles.append(_LISTING_FRAMES[int(rng.integers(len(_LISTING_FRAMES)))].format(objects=by_size, bg=bg))
    shapes = Counter(o.category for o in ordered)
    by_shape = _join([noun(s, None, n) if n > 1 else with_article(s) for s, n in shapes.items()])
    total = len(objects)
    extras = [f"{number_word(total)} objects: {by_shape}" if total > 1 else f"{by_shape} alone"]
    pairs = [(a, b, relation(a, b)) for a in ordered for b in ordered if a is not b]
    pairs = [p for p in pairs if p[2]]
    if pairs:
        a, b, rel = pairs[int(rng.integers(len(pairs)))]
        extras.append(f"{with_article(noun(a.category, a.color))} {rel} {with_article(noun(b.category, b.color))}")
    styles += [extras[k] for k in rng.permutation(len(extras))]
    return [styles[i % len(styles)] for i in range(count)]


# ---------------------------------------------------------------------------------------------
# Referring expressions


def _unique(objects: Sequence[ObjectFacts], target: int, test) -> bool:
    return [i for i, o in enumerate(objects) if test(o)] == [target]


def referring_expressions(
    objects: Sequence[ObjectFacts], target: int, rng: np.random.Generator, limit: int = 3
) -> list[str]:
    """Expressions that single out objects[target] among `objects` (attributes, size, ordinal,
    relations). Empty when nothing identifies it."""
    t = objects[target]
    candidates: list[str] = []
    same_kind = [i for i, o in enumerate(objects) if o.category == t.category and o.color == t.color]
    if _unique(objects, target, lambda o: o.category == t.category):
        candidates.append(f"the {noun(t.category)}")
    if len(same_kind) == 1:
        candidates.append(f"the {noun(t.category, t.color)}")
    if _unique(objects, target, lambda o: o.color == t.color):
        candidates.append(f"the {t.color} {'one' if rng.random() < 0.5 else 'thing'}")
    if len(same_kind) > 1 and _unique(
        objects, target, lambda o: (o.category, o.color, o.size) == (t.category, t.color, t.size)
    ):
        candidates.append(f"the {noun(t.category, t.color, size=t.size)}")
    if len(same_kind) > 1:
        kind_name = noun(t.category, t.color)
        centers = np.array([objects[i].center for i in same_kind])
        k = same_kind.index(target)
        for axis, low_word, high_word in ((0, "leftmost", "rightmost"), (1, "topmost", "bottom")):
            ordered = np.sort(centers[:, axis])
            gap = np.diff(ordered).min() if len(ordered) > 1 else 0
            if gap < 3:
                continue
            if centers[k, axis] == ordered[0]:
                candidates.append(f"the {low_word} {kind_name}")
            elif centers[k, axis] == ordered[-1]:
                candidates.append(f"the {high_word} {kind_name}")
            elif axis == 0 and len(same_kind) >= 3 and centers[k, axis] == ordered[1]:
                candidates.append(f"the second {kind_name} from the left")
    # Relations to an object that has a unique name of its own.
    for j, other in enumerate(objects):
        if j == target:
            continue
        rel = relation(t, other)
        if rel is None:
            continue
        anchors = [i for i, o in enumerate(objects) if (o.category, o.color) == (other.category, other.color)]
        if anchors != [j]:
            continue
        for name, test in (
            (noun(t.category), lambda o, c=t.category: o.category == c),
            (noun(t.category, t.color), lambda o, c=(t.category, t.color): (o.category, o.color) == c),
            (noun(t.category, size=t.size), lambda o, c=(t.category, t.size): (o.category, o.size) == c),
        ):
            if _unique(
                objects, target, lambda o, test=test, other=other, rel=rel: test(o) and relation(o, other) == rel
            ):
                candidates.append(f"the {name} {rel} the {noun(other.category, other.color)}")
                break
    unique = list(dict.fromkeys(candidates))
    if len(unique) > limit:
        unique = [unique[i] for i in sorted(rng.choice(len(unique), size=limit, replace=False))]
    return unique


# ---------------------------------------------------------------------------------------------
# Questions


@dataclass(frozen=True)
class Question:
    """A question with its canonical answer and VQAv2 types."""

    question: str
    answer: str
    answer_type: str  # "yes/no", "number", "other"
    question_type: str


def questions(objects: Sequence[ObjectFacts], rng: np.random.Generator, count: int = 5) -> list[Question]:
    """True questions about a scene: counting, colour, shape, existence, relation."""
    pool: list[Question] = []
    colors, shapes = list(COLORS), list(SHAPES)
    # Counting: a present group, and a random (possibly absent) one.
    for _ in range(2):
        if objects and rng.random() < 0.7:
            o = objects[int(rng.integers(len(objects)))]
            color, category = o.color, o.category
        else:
            color, category = colors[int(rng.integers(len(colors)))], shapes[int(rng.integers(len(shapes)))]
        if rng.random() < 0.3:
            n = sum(o.category == category for o in objects)
            name = _PLURAL[category]
        else:
            n = sum(o.category == category and o.color == color for o in objects)
            name = noun(category, color, 2).split(" ", 1)[1]
        pool.append(Question(f"How many {name} are there?", str(n), "number", "how many"))
    pool.append(Question("How many objects are in the image?", str(len(objects)), "number", "how many"))
    # Colour of a uniquely named shape, shape of a unique colour.
    for i, o in enumerate(objects):
        if _unique(objects, i, lambda x, c=o.category: x.category == c):
            q = f"What color is the {noun(o.category)}?"
            pool.append(Question(q, o.color, "other", "what color is the"))
        if o.category != PERSON and _unique(objects, i, lambda x, c=o.color: x.color == c):
            pool.append(Question(f"What shape is the {o.color} object?", o.category, "other", "what shape is the"))
    # Existence, balanced yes / no.
    color, category = colors[int(rng.integers(len(colors)))], shapes[int(rng.integers(len(shapes)))]
    if objects and rng.random() < 0.5:
        o = objects[int(rng.integers(len(objects)))]
        color, category = o.color, o.category
    present = any(o.color == color and o.category == category for o in objects)
    pool.append(
        Question(f"Is there {with_article(noun(category, color))}?", "yes" if present else "no", "yes/no", "is there a")
    )
    # Relations between uniquely named objects.
    named = [
        i
        for i, o in enumerate(objects)
        if _unique(objects, i, lambda x, o=o: (x.category, x.color) == (o.category, o.color))
    ]
    for _ in range(2):
        if len(named) < 2:
            break
        i, j = (int(v) for v in rng.choice(named, size=2, replace=False))
        rel = relation(objects[i], objects[j])
        if rel is None:
            continue
        asked = (
            rel if rng.random() < 0.5 else ["above", "below", "to the left of", "to the right of"][int(rng.integers(4))]
        )
        a, b = noun(objects[i].category, objects[i].color), noun(objects[j].category, objects[j].color)
        pool.append(Question(f"Is the {a} {asked} the {b}?", "yes" if asked == rel else "no", "yes/no", "is the"))
    order = rng.permutation(len(pool))
    return [pool[k] for k in order[:count]]


def annotator_answers(answer: str, answer_type: str, rng: np.random.Generator) -> list[str]:
    """Ten human-like answers: the true answer in the surface forms people write
    ("2" / "two", "Yes", "a circle", "red."), which VQA normalisation maps back to one answer."""
    variants = [answer]
    if answer_type == "number" and answer.isdigit() and int(answer) < len(NUMBER_WORDS):
        variants.append(NUMBER_WORDS[int(answer)])
    elif answer_type == "yes/no":
        variants += [answer.capitalize(), answer + "."]
    elif answer in SHAPES:
        variants += [with_article(answer), answer.capitalize()]
    else:
        variants += [answer.capitalize(), answer + "."]
    out = []
    for _ in range(10):
        out.append(answer if rng.random() < 0.75 else variants[int(rng.integers(len(variants)))])
    return out


def answer_sentence(q: Question) -> str:
    """A chat-style full-sentence answer to a question."""
    if q.answer_type == "yes/no":
        return "Yes." if q.answer == "yes" else "No."
    if q.question_type == "how many":
        n = int(q.answer)
        return f"There {'is' if n == 1 else 'are'} {number_word(n)}."
    if q.question_type == "what color is the":
        return f"It is {q.answer}."
    return f"It is {with_article(q.answer)}."


def region_description(o: ObjectFacts) -> str:
    return with_article(noun(o.category, o.color, size=o.size))


def coco_phrase_view(instances: dict, phrases: Sequence[str]) -> dict:
    """A COCO instances dict whose categories are `phrases` (ids 1..n, in order).

    Each object becomes an annotation of every phrase that names it, so "circle" and "red circle"
    can be evaluated side by side, and a colour-shape pair held out of training can be its own
    category. Objects need ShapesWorld's `attributes` (color, size).
    """
    names = {c["id"]: c["name"] for c in instances["categories"]}
    parsed = [(i + 1, parse_phrase(p)) for i, p in enumerate(phrases)]
    annotations = []
    for ann in instances["annotations"]:
        x, y, w, h = ann["bbox"]
        attributes = ann.get("attributes", {})
        facts = ObjectFacts(
            names[ann["category_id"]], attributes.get("color", ""), attributes.get("size", ""), (x, y, x + w, y + h)
        )
        for category_id, phrase in parsed:
            if phrase is not None and phrase.matches(facts):
                annotations.append({**ann, "id": len(annotations) + 1, "category_id": category_id})
    return {
        **{k: v for k, v in instances.items() if k not in ("annotations", "categories")},
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": p, "supercategory": "phrase"} for i, p in enumerate(phrases)],
    }
