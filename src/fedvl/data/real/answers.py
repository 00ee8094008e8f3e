"""Answer normalisation, per-client answer vocabularies and the VQA soft score.

Normalisation follows the official VQA evaluation (GT-Vision-Lab/VQA,
``vqaEval.py``: ``processPunctuation`` then ``processDigitArticle``): strip
punctuation (dropped when it touches a space or the answer holds a "1,000"
style number, else replaced by a space), drop periods that are not decimal
points, lower-case, number words -> digits, drop articles, restore the
apostrophe of common contractions ("dont" -> "don't"). We write contractions
with an ASCII apostrophe where the official table mixes in curly ones; both
sides of every comparison go through the same function, so matches are the same.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable

_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# The contractions of the official table, written once with their apostrophes; the
# lookup maps every spelling with some apostrophes missing to the full one.
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd "
    "he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll let's ma'am mightn't mightn't've "
    "might've mustn't must've needn't not've o'clock oughtn't shan't she'd've she's should've shouldn't "
    "shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's "
    "something'd something'd've something'll that's there'd there'd've there're there's they'd they'd've they'll "
    "they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd where's "
    "where've who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all "
    "y'all'll y'all'd've you'd you'd've you'll you're you've"
).split()


def _contraction_table() -> dict[str, str]:
    table = {}
    for word in _CONTRACTED:
        cuts = [i for i, ch in enumerate(word) if ch == "'"]
        for k in range(1, len(cuts) + 1):
            for drop in itertools.combinations(cuts, k):
                table["".join(ch for i, ch in enumerate(word) if i not in drop)] = word
    return table


_CONTRACTIONS = _contraction_table()


def _punctuation(text: str) -> str:
    out = text
    has_number_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or has_number_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(answer: str) -> str:
    """The official VQA answer normalisation ("Two dogs." -> "2 dogs")."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text))


def majority_answer(answers: list[str]) -> str:
    """The most frequent of the (normalised) annotator answers; ties go to the first given."""
    return Counter(answers).most_common(1)[0][0]


def top_k_vocab(labels: Iterable[str], k: int) -> list[str]:
    """The ``k`` most frequent answers, most frequent first, ties in alphabetical order
    (so the vocabulary does not depend on file order). FedDAT uses k = 100 per client."""
    counts = Counter(labels)
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def vqa_score(matches: int, annotators: int) -> float:
    """Score of a predicted answer that ``matches`` of ``annotators`` humans gave.

    VQA (Antol et al. 2015, https://arxiv.org/abs/1505.00468): min(1, #humans that
    gave the answer / 3), averaged, as the official evaluation does, over the
    ``annotators`` leave-one-out subsets. For 10 annotators: 1 -> 0.3, 2 -> 0.6,
    3 -> 0.9, >= 4 -> 1.0. With one answer per question (GQA, COCO-QA, AQUA)
    there is nobody to agree with: the score is exact match.
    """
    if annotators <= 1:
        return float(matches >= 1)
    hit = matches * min(1.0, (matches - 1) / 3.0)  # leaving out one of the matching annotators
    miss = (annotators - matches) * min(1.0, matches / 3.0)
    return (hit + miss) / annotators


def answer_scores(answers: list[str]) -> dict[str, float]:
    """The score every distinct answer would get for this question (its soft target)."""
    counts = Counter(answers)
    return {a: vqa_score(c, len(answers)) for a, c in counts.items()}
