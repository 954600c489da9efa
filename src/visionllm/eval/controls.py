"""Controls that show whether a model's text answers come from the image.

* ``derangement``: which other image of the evaluated set each image is replaced by for the "blind"
  scores (``CIDEr_blind``, ``vqa_accuracy_blind``): the same questions and references, the wrong image.
* ``QuestionPrior``: the question-only baseline (``vqa_prior``): for each question text, the most common
  training answer, whatever the image.

A model that reads the image scores well above both; one that has learnt the language of the set only
scores about the same with and without its image, and about the prior.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from visionllm.data.sample import Sample

__all__ = ["QuestionPrior", "derangement"]

T = TypeVar("T", bound=Hashable)


def derangement(items: Sequence[T]) -> dict[T, T]:
    """A fixed-point-free, deterministic swap of the distinct items (images) of a set.

    Distinct items are listed in order of first appearance; item i is replaced by item (i + n // 2) mod n,
    so with n >= 2 no item maps to itself and the swap is a permutation (every image is still seen once).

    Args:
        items: the items, repeats allowed (a VQA set asks several questions of one image).

    Returns:
        Per distinct item, its replacement.

    Raises:
        ValueError: With fewer than two distinct items, which cannot be swapped.
    """
    distinct = list(dict.fromkeys(items))
    n = len(distinct)
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 distinct items, got {n}")
    return {item: distinct[(i + n // 2) % n] for i, item in enumerate(distinct)}


@dataclass(frozen=True)
class QuestionPrior:
    """The question-only VQA baseline: the most common training answer per question text.

    Attributes:
        by_question: per training question text (exact string), its most common human answer.
        fallback: the most common human answer over all training questions, for unseen question texts.
    """

    by_question: Mapping[str, str]
    fallback: str

    @classmethod
    def fit(cls, samples: Sequence[Sample]) -> QuestionPrior:
        """Counts the human answers (all of them, as annotated) of VQA samples.

        Ties go to the answer seen first, so the prior is deterministic for a given file.

        Raises:
            ValueError: When no sample has an answer.
        """
        per_question: dict[str, Counter[str]] = {}
        overall: Counter[str] = Counter()
        for sample in samples:
            if sample.qa is None or not sample.qa.answers:
                continue
            per_question.setdefault(sample.qa.question, Counter()).update(sample.qa.answers)
            overall.update(sample.qa.answers)
        if not overall:
            raise ValueError("a question prior needs answered VQA samples, got none")
        by_question = {question: counts.most_common(1)[0][0] for question, counts in per_question.items()}
        return cls(by_question, overall.most_common(1)[0][0])

    def answer(self, question: str) -> str:
        """The prior's answer to `question`, without looking at any image."""
        return self.by_question.get(question, self.fallback)
