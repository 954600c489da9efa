"""A small WordPiece vocabulary for LLMs trained from scratch on the project's instruction language.

A pretrained LLM keeps its own tokenizer. A tiny LLM trained from scratch does not need BERT's 30k
entries: every row of its embedding table and output head costs memory, time and gradient on every
step, and the instructions, ShapesWorld's captions, questions and answers use a few hundred words.
`train_wordpiece` builds a BERT-style (lower-cased WordPiece, `tokenizers` library) vocabulary of that
language's words; words outside it still encode, as single characters.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from visionllm.data.shapes.dataset import iter_split
from visionllm.data.shapes.scene import COLORS, SHAPES, ShapesWorldConfig
from visionllm.formats.keypoints import COCO_KEYPOINT_NAMES
from visionllm.formats.task_table import TASK_TABLE, build_instruction, build_request
from visionllm.formats.tokens import CodecConfig

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def instruction_corpus(scenes: int = 300, seed: int = 12345) -> Iterator[str]:
    """The project's instruction language: every template of every task, filled in, and the captions,
    referring expressions, questions, answers and conversations of `scenes` ShapesWorld scenes."""
    phrases = [f"{c} {s}" for c in COLORS for s in SHAPES] + ["person"]
    codec = CodecConfig()
    for task, spec in TASK_TABLE.items():
        for index in range(len(spec.templates)):
            fields = {
                "classes": phrases[index % 7 :: 7],
                "expression": "the leftmost red circle",
                "question": "How many stars are there?",
                "regions": "region1 <region>",
                "description": "a red circle left of a blue square",
                "edit": "make the star green",
            }
            yield build_instruction(task, template=index, config=codec, **fields).text
        for index in range(len(spec.routed)):
            yield build_request(task, template=index, **fields)
    yield " ".join(COCO_KEYPOINT_NAMES).replace("_", " ")
    for record in iter_split(seed, "train", scenes, ShapesWorldConfig()):
        yield from record.captions
        for _, sentences in record.refs:
            yield from sentences
        for question, answers in zip(record.questions, record.answers, strict=True):
            yield question.question
            yield from answers
        for turn in record.conversation:
            yield turn["value"]


def train_wordpiece(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A lower-cased WordPiece tokenizer of at most `vocab_size` entries learned from `corpus`.

    The vocabulary is the corpus's most frequent words (ties in alphabetical order, so the same corpus
    always gives the same ids) after the special tokens and every printable ASCII character, alone and as
    a word-continuing piece: a word outside the vocabulary encodes as characters, never as [UNK].
    [CLS], [SEP] and [PAD] serve as begin, end and padding tokens.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    alphabet = sorted(set(string.printable) - set(string.whitespace))
    base = [*SPECIAL_TOKENS, *alphabet, *(f"##{c}" for c in alphabet)]
    if vocab_size < len(base):
        raise ValueError(f"a trained vocabulary needs at least {len(base)} entries, got {vocab_size}")
    counts: Counter[str] = Counter()
    for text in corpus:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    words = sorted((w for w in counts if w not in base), key=lambda w: (-counts[w], w))
    entries = base + words[: vocab_size - len(base)]
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(entries)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", bos_token="[CLS]", eos_token="[SEP]"
    )
