import pytest

from visionllm.data.sample import QuestionAnswer, Sample
from visionllm.eval.controls import QuestionPrior, derangement
from visionllm.formats.tasks import Task


@pytest.mark.parametrize("n", range(2, 12))
def test_derangement_is_a_permutation_without_fixed_points(n):
    items = [f"img{i}" for i in range(n)]
    swap = derangement(items)
    assert set(swap) == set(items)
    assert sorted(swap.values()) == sorted(items)  # every image is still seen, once
    assert all(swap[item] != item for item in items)
    assert derangement(items) == swap  # deterministic


def test_derangement_swaps_repeated_items_alike():
    # A VQA set asks several questions of one image: all of them get the same other image.
    swap = derangement(["a", "a", "b", "c", "b", "a"])
    assert swap == {"a": "b", "b": "c", "c": "a"}  # distinct in order of appearance, shifted by n // 2 = 1


@pytest.mark.parametrize("items", [[], ["a"], ["a", "a", "a"]])
def test_derangement_needs_two_distinct_items(items):
    with pytest.raises(ValueError, match="at least 2 distinct"):
        derangement(items)


def _vqa(question: str, *answers: str) -> Sample:
    return Sample(Task.VQA, "x.png", 0, qa=QuestionAnswer(question, answers))


def test_question_prior_answers_the_most_common_train_answer_per_question():
    prior = QuestionPrior.fit(
        [
            _vqa("How many stars?", "2", "2", "3"),
            _vqa("How many stars?", "3", "3", "3"),  # over all answers of the question: "3" four times, "2" twice
            _vqa("Is it red?", "yes", "yes", "Yes"),
            _vqa("Is it red?", "no", "no"),
            _vqa("Is it blue?", "no", "no", "no"),
        ]
    )
    assert prior.answer("How many stars?") == "3"
    assert prior.answer("Is it red?") == "yes"
    assert prior.answer("Is it blue?") == "no"
    assert prior.answer("What shape is the green object?") == prior.fallback == "no"  # unseen: overall most common


def test_question_prior_breaks_ties_by_first_answer_seen():
    prior = QuestionPrior.fit([_vqa("Is it red?", "no", "yes"), _vqa("Is it red?", "yes", "no")])
    assert prior.answer("Is it red?") == "no"


def test_question_prior_needs_answers():
    with pytest.raises(ValueError, match="answered VQA samples"):
        QuestionPrior.fit([Sample(Task.VQA, "x.png", 0, qa=QuestionAnswer("Is it red?", ()))])
