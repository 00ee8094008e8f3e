"""From parsed questions to a client's split: answer vocabulary, labels, soft scores.

A client's vocabulary is the top-K of its own training answers (FedDAT: K = 100
per client). A training question whose answer is outside the vocabulary cannot
be a classification target and is dropped; a test question is kept and scores 0
whatever the model answers, so the score stays comparable to the source's own
evaluation over all its questions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedvl.data.real.answers import answer_scores, majority_answer, normalize_answer
from fedvl.data.real.base import DOCS, DatasetError, Question


@dataclass
class RealSplit:
    """Questions of one client split; images stay on disk (paths only)."""

    source: str
    images: list[Path]  # unique image files, in order of first use
    image_index: np.ndarray  # (N,) row of ``images`` for each question
    questions: list[str]
    labels: np.ndarray  # (N,) index of the majority answer in ``vocab``; -1 = outside the vocabulary
    score_idx: np.ndarray  # (N, A) vocab indices of the distinct human answers, -1 = padding
    score_val: np.ndarray  # (N, A) the VQA score each of those answers would get
    vocab: list[str]
    task: str = "vqa"
    answers: list[list[str]] = field(default_factory=list)
    """Per question, the normalised human answers (a generated answer is scored against all of them)."""

    def __len__(self) -> int:
        return len(self.questions)


def make_split(source: str, questions: list[Question], vocab: list[str], keep_unlabelled: bool) -> RealSplit:
    index = {a: i for i, a in enumerate(vocab)}
    kept = []
    for q in questions:
        label = index.get(majority_answer(q.answers), -1)
        if label >= 0 or keep_unlabelled:
            kept.append((q, label))
    rows: dict[Path, int] = {}
    for q, _ in kept:
        rows.setdefault(q.image, len(rows))
    missing = next((p for p in rows if not p.is_file()), None)
    if missing is not None:
        raise DatasetError(f"{source}: image {missing} not found (expected layout: {DOCS})")
    width = max((len(set(q.answers)) for q, _ in kept), default=1)
    score_idx = np.full((len(kept), width), -1, dtype=np.int64)
    score_val = np.zeros((len(kept), width), dtype=np.float32)
    for r, (q, _) in enumerate(kept):
        scored = [(index[a], s) for a, s in answer_scores(q.answers).items() if a in index]
        for c, (i, s) in enumerate(scored):
            score_idx[r, c], score_val[r, c] = i, s
    return RealSplit(
        source=source,
        images=list(rows),
        image_index=np.array([rows[q.image] for q, _ in kept], dtype=np.int64),
        questions=[q.question for q, _ in kept],
        labels=np.array([label for _, label in kept], dtype=np.int64),
        score_idx=score_idx,
        score_val=score_val,
        vocab=list(vocab),
        answers=[[normalize_answer(a) for a in q.answers] for q, _ in kept],
    )
