"""Answer normalisation of the official VQA evaluation (``vqaEval.py`` of the VQA API, GT-Vision-Lab/VQA).

The tables and the two steps below reproduce that code's behaviour, quirks included, because VQA
accuracy is only comparable across papers when every answer is normalised the same way:

* ``process_punctuation``: each mark of ``PUNCTUATION`` is deleted when it touches a space somewhere
  in the text (or when the text holds a digit-comma-digit group such as "1,000"), and replaced by a
  space otherwise. The decision looks at the *input* text, not at the partly processed one. Then
  periods not followed by a digit are deleted. The official period pattern ``(?!<=\\d)(\\.)(?!\\d)``
  was meant to have a look-behind ``(?<!\\d)`` but has a look-ahead for the literal "<=", which is
  always true before a ".", so "2.5" keeps its period and "e.g." loses both. The official call also
  passes ``re.UNICODE`` as the positional ``count`` argument of ``Pattern.sub``, so at most 32
  periods are deleted.
* ``process_digit_article``: lower-cases, splits on whitespace, maps number words "none"/"zero" ..
  "ten" to digits, drops the articles "a", "an", "the", then expands apostrophe-less contractions
  ("dont" -> "don't"). The apostrophe is not in the punctuation list, so "don't" stays as it is.
  Keys of the contraction table with capitals ("Im", "Ive", "Id've", "I'dve") can never match after
  lower-casing; they are kept because the official table has them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = [
    "ARTICLES",
    "CONTRACTIONS",
    "NUMBER_WORDS",
    "PUNCTUATION",
    "clean_answer_whitespace",
    "normalize_vqa_answer",
    "process_digit_article",
    "process_punctuation",
]

# Apostrophe-less spelling -> spelling with apostrophes, as in the official table (entries such as
# "somebody'd" -> "somebodyd", which go the other way, included).
CONTRACTIONS: Mapping[str, str] = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}

# Number words -> digits ("none" counts as zero: "how many ...?" "none").
NUMBER_WORDS: Mapping[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# The official list, in its order. Neither "." (handled by the period pattern), "'" nor ":" is in it.
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip

# The official patterns, verbatim (see the module docstring for what the period pattern really does).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
# The official code calls periodStrip.sub("", text, re.UNICODE): the flag lands in `count`.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """Removes punctuation the way the official VQA evaluation does.

    Args:
        text: An answer.

    Returns:
        The answer with the marks of ``PUNCTUATION`` deleted or turned into spaces, and periods that
        are not followed by a digit deleted. Whitespace is not collapsed here.
    """
    delete_all = _COMMA_STRIP.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if delete_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """Lower-cases, maps number words to digits, drops articles and expands contractions.

    Args:
        text: An answer, usually after ``process_punctuation``.

    Returns:
        The words joined by single spaces.
    """
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_vqa_answer(text: str) -> str:
    """The full official normalisation of one answer.

    Newlines and tabs become spaces and the ends are stripped (the official code does this to every
    answer first), then ``process_punctuation`` and ``process_digit_article`` run.

    Args:
        text: An answer, from a model or an annotator.

    Returns:
        The normalised answer, e.g. "Two dogs." -> "2 dogs", "A circle" -> "circle", "dont" -> "don't".
    """
    return process_digit_article(process_punctuation(clean_answer_whitespace(text)))


def clean_answer_whitespace(text: str) -> str:
    """The official first step for every answer, normalised or not.

    Args:
        text: An answer.

    Returns:
        The answer with newlines and tabs turned into spaces and its ends stripped.
    """
    return text.replace("\n", " ").replace("\t", " ").strip()
