"""Answer normalisation, the VQA soft score and top-K vocabularies, by hand."""

import pytest
import torch

from fedvl.data.real.answers import answer_scores, majority_answer, normalize_answer, top_k_vocab, vqa_score
from fedvl.engine.loops import classification_metrics
from fedvl.engine.loops import vqa_score as batch_vqa_score


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"),
    ("The dog.", "dog"),
    ("a red ball", "red ball"),
    ("dont", "don't"),
    ("yes!", "yes"),
    ("1,000", "1000"),  # a number comma: punctuation is dropped, not spaced
    ("black/white", "black white"),  # a slash between words becomes a space
    ("3.5", "3.5"),  # a decimal point stays
    ("  Ten\tApples\n", "10 apples"),
    ("couldnt've", "couldn't've"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_vqa_score_official_leave_one_out_values():
    # 10 annotators: min(1, matches/3) averaged over the 10 leave-one-out subsets
    assert [round(vqa_score(m, 10), 6) for m in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    # by hand for 3 matches: 3 subsets lose a match (2/3), 7 keep all three (1) -> (3*2/3 + 7)/10
    assert vqa_score(3, 10) == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert vqa_score(1, 1) == 1.0 and vqa_score(0, 1) == 0.0  # one answer: exact match


def test_answer_scores_and_majority():
    answers = ["red"] * 7 + ["dark red"] * 2 + ["pink"]
    s = answer_scores(answers)
    assert s == pytest.approx({"red": 1.0, "dark red": 0.6, "pink": 0.3})
    assert majority_answer(answers) == "red"


def test_top_k_vocab_frequency_then_alphabet():
    labels = ["b", "a", "c", "a", "b", "d"]
    assert top_k_vocab(labels, 3) == ["a", "b", "c"]  # a, b: 2 each (alphabetical); c beats d alphabetically
    assert top_k_vocab(labels, 10) == ["a", "b", "c", "d"]


def test_batch_vqa_score_and_out_of_vocab_labels():
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])
    score_idx = torch.tensor([[0, 1], [0, -1], [-1, -1]])
    score_val = torch.tensor([[0.6, 1.0], [1.0, 0.0], [0.0, 0.0]])
    # q0 predicts 0 (0.6), q1 predicts 1 (no human said it: 0), q2's answers are all outside the vocabulary
    assert batch_vqa_score(logits, score_idx, score_val) == pytest.approx(0.6 / 3)
    m = classification_metrics(logits, torch.tensor([1, 1, -1]))
    assert m["acc"] == pytest.approx(1 / 3)  # the -1 question is always wrong
    assert m["bal_acc"] == pytest.approx(1 / 2)  # class 1: 1 of 2 right; -1 is no class of its own
