"""Evaluating a generative VLM: greedy decoding, then the text scored as VQA scores answers.

A generated answer is normalised as the official VQA evaluation does (punctuation, articles, number
words, contractions: :func:`fedvl.data.real.answers.normalize_answer`) and then

* ``acc``: it is the question's answer from the client's label space (``vocab[label]``), the number
  the classifier models report, so the tables compare across model families;
* ``exact``: it is the majority human answer (free text: an answer outside the label space counts);
* ``vqa_score``: the VQA score it gets from the human answers (min(1, #humans / 3), leave-one-out
  averaged; exact match with one answer per question);
* ``bal_acc``: accuracy averaged over the answer classes present;

(A question that lists lettered options, "A. red (B) blue", takes a letter answer as that option.)
* ``loss``: the answer tokens' cross-entropy under teacher forcing (what training minimises);
* ``gen_seconds``: time spent generating (or ranking).

``model.answer_mode=rank`` picks each answer from the label space by likelihood instead of decoding
(:func:`rank_answers`).
"""

from __future__ import annotations

import re
import time

import numpy as np
import torch
import torch.nn.functional as F

from fedvl.data.real.answers import answer_scores, majority_answer, normalize_answer
from fedvl.engine.device import FP32_CPU, Amp, to_device


# "A. red", "(B) blue", "C) green", "D: yellow": a multiple-choice question lists its options in its text
_OPTION = re.compile(r"(?:^|(?<=\s))\(?([A-H])(?:\)|\.|:)\s+(.+?)(?=\s+\(?[A-H](?:\)|\.|:)\s|\s*$)", re.S)
_LETTER = re.compile(r"^\(?([A-H])(?:\)|\.|:)?(?:\s|$)")


def options(question: str) -> dict[str, str]:
    """The lettered options a question lists (A, B, ... in order, at least two), else {}."""
    found = {m.group(1): m.group(2).strip() for m in _OPTION.finditer(question)}
    letters = "ABCDEFGH"[: len(found)]
    return found if len(found) >= 2 and "".join(sorted(found)) == letters else {}


def parse_choice(text: str, question: str) -> str:
    """A generated answer to a multiple-choice question as the option's text: "B", "(B)", "B." or
    "B) blue" name option B; any other text is returned as it is."""
    opts = options(question)
    m = _LETTER.match(text.strip()) if opts else None
    return opts.get(m.group(1), text) if m else text


def score_answers(texts: list[str], labels: list[int], vocab: list[str],
                  humans: list[list[str]], questions: list[str] | None = None) -> dict[str, float]:
    """Pure scoring of generated ``texts`` (see the module doc); ``humans``: normalised human answers;
    ``questions``: where one lists lettered options, a letter answer is read as its option."""
    if questions:
        texts = [parse_choice(t, q) for t, q in zip(texts, questions)]
    index = {normalize_answer(a): i for i, a in enumerate(vocab)}
    norm = [normalize_answer(t) for t in texts]
    pred = np.array([index.get(t, -1) for t in norm])
    lab = np.array(labels)
    correct = (pred == lab) & (lab >= 0)
    recalls = [correct[lab == c].mean() for c in np.unique(lab) if c >= 0]
    n = len(texts)
    return {
        "acc": float(correct.mean()) if n else float("nan"),
        "bal_acc": float(np.mean(recalls)) if recalls else float("nan"),
        "exact": float(np.mean([t == majority_answer(h) for t, h in zip(norm, humans) if h])) if n else float("nan"),
        "vqa_score": float(np.mean([answer_scores(h).get(t, 0.0) for t, h in zip(norm, humans)])) if n else float("nan"),
        "n": n,
    }


@torch.no_grad()
def generate_answers(model, data, batch_size: int, max_new_tokens: int, amp: Amp = FP32_CPU) -> list[str]:
    """Greedy answers to every question of ``data`` (a :class:`fedvl.data.vlm_encode.GenerativeSplit`)."""
    tok = model.processor.tokenizer
    # the tokenizer's end of turn and the checkpoint's own end tokens all stop an answer
    end = sorted(set(_ids(tok.eos_token_id)) | set(_ids(getattr(model.lm.generation_config, "eos_token_id", None))))
    texts: list[str] = []
    for start in range(0, len(data), batch_size):
        b = to_device(data.batch(torch.arange(start, min(start + batch_size, len(data))), prompt_only=True),
                      model.device)
        with amp.autocast():
            out = model.lm.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                    **model._inputs(b), max_new_tokens=max_new_tokens, do_sample=False,
                                    num_beams=1, eos_token_id=end or None, pad_token_id=data.pad_id)
        new = out[:, b["input_ids"].shape[1]:].cpu()
        texts.extend(" ".join(t.split()) for t in tok.batch_decode(new, skip_special_tokens=True))
    return texts


@torch.no_grad()
def rank_answers(model, data, amp: Amp = FP32_CPU) -> list[str]:
    """For every question, the answer of the label space whose assistant turn is most likely after its
    prompt (sum of the turn's token log-probabilities, end of turn included, so "red" and "red car"
    differ). One forward over (candidates, prompt + turn) per question: cheaper than generating when
    the label space is small, and never an answer outside it."""
    from fedvl.data.vlm_encode import answer_turns

    turns = answer_turns(model.processor, data.vocab)
    sizes = [len(t) for t in turns]
    out = []
    for row in range(len(data)):
        b = to_device(data.candidates(row, turns), model.device)
        with amp.autocast():
            logp = torch.log_softmax(model.forward_batch(b).float(), -1)
        per_token = logp.gather(1, b["labels"][:, None]).squeeze(1).cpu()
        scores = torch.stack([s.sum() for s in per_token.split(sizes)])
        out.append(data.vocab[int(scores.argmax())])
    return out


def _ids(value) -> list[int]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in values if isinstance(v, int)]


@torch.no_grad()
def answer_loss(model, data, batch_size: int, amp: Amp = FP32_CPU) -> float:
    """Mean cross-entropy of the answer tokens under teacher forcing."""
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        b = to_device(data.batch(torch.arange(start, min(start + batch_size, len(data)))), model.device)
        with amp.autocast():
            logits = model.forward_batch(b)
        total += F.cross_entropy(logits.float(), b["labels"], reduction="sum").item()
        count += len(b["labels"])
    return total / count if count else float("nan")


def evaluate_generative(model, data, batch_size: int, max_new_tokens: int, amp: Amp = FP32_CPU) -> dict[str, float]:
    was = model.training
    model.eval()
    t0 = time.perf_counter()
    if getattr(model, "answer_mode", "generate") == "rank":
        texts = rank_answers(model, data, amp)
    else:
        texts = generate_answers(model, data, batch_size, max_new_tokens, amp)
    seconds = time.perf_counter() - t0
    metrics = score_answers(texts, data.labels.tolist(), data.vocab, data.answers, data.questions)
    metrics["loss"] = answer_loss(model, data, batch_size, amp)
    metrics["gen_seconds"] = seconds
    model.train(was)
    return metrics
