"""Questions and answers -> a generative VLM's training and generation inputs (``model.name=hf-vlm``).

Each question is rendered with the checkpoint's own chat template: a user turn holding the image and the
question, and for training the answer as the assistant turn. The prompt is the same conversation rendered
with ``add_generation_prompt`` (what generation starts from); the tokens after it (the answer and the
template's end of turn) are the targets, everything before carries no loss. The processor expands the
image placeholder into the image's tokens, so the sequence is exactly what the checkpoint was trained on.
Sequences are padded on the right for training and on the left for generation, per batch.

``model.max_text_len`` bounds the question's own tokens (it is cut before rendering): the image tokens,
the template and the answer are never truncated.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fedvl.data.real.answers import normalize_answer
from fedvl.io import atomic_write
from fedvl.models.parts import ModelUnavailableError

_TEXT = ("input_ids", "attention_mask")


@dataclass
class GenerativeSplit:
    ids: list[torch.Tensor]  # per sample: prompt + answer turn, (L_i,) long
    prompt_len: torch.Tensor  # (N,) where the answer turn starts
    text_extra: dict[str, list[torch.Tensor]]  # per-sample token-aligned processor outputs (token_type_ids ...)
    image_index: torch.Tensor  # (N,) row of ``pixels`` / ``image_tokens``
    pixels: list[dict[str, torch.Tensor]]  # per image: the processor's image outputs (first dim 1 image)
    image_tokens: list[torch.Tensor] | None  # per image: the cached vision side's output, (T, hidden) half
    labels: torch.Tensor  # (N,) the answer's index in ``vocab``, -1 outside it (metrics)
    answers: list[list[str]]  # per sample: the normalised human answers (one for synthetic data)
    vocab: list[str]  # the label space's answers (scoring maps generated text onto it)
    pad_id: int
    task: str = "vqa"
    score_idx: torch.Tensor | None = None
    score_val: torch.Tensor | None = None
    questions: list[str] = field(default_factory=list)  # the question texts (multiple-choice options)

    def __len__(self) -> int:
        return len(self.ids)

    def _images(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = self.image_index[idx].tolist()
        out: dict[str, torch.Tensor] = {}
        keys = self.pixels[rows[0]].keys() if rows else ()
        for k in keys:
            if self.image_tokens is not None and k == "pixel_values":
                continue  # the cached tokens stand for the pixels
            out["pixel." + k] = torch.cat([self.pixels[r][k] for r in rows])
        if self.image_tokens is not None:
            toks = [self.image_tokens[r] for r in rows]
            out["image_tokens"] = torch.cat(toks).float()
            out["image_token_counts"] = torch.tensor([len(t) for t in toks])
        return out

    def batch(self, idx: torch.Tensor, prompt_only: bool = False) -> dict[str, torch.Tensor]:
        """Training inputs (right-padded; ``labels`` = the answer tokens in order), or with
        ``prompt_only`` the generation inputs (the prompts, left-padded)."""
        rows = idx.tolist()
        cut = [int(self.prompt_len[r]) if prompt_only else len(self.ids[r]) for r in rows]
        width = max(cut)
        left = prompt_only  # a decoder generates after the last position: prompts end together
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        target = torch.zeros((len(rows), width), dtype=torch.bool)
        extra = {k: torch.zeros((len(rows), width), dtype=v[0].dtype) for k, v in self.text_extra.items()}
        for b, (r, n) in enumerate(zip(rows, cut)):
            at = slice(width - n, width) if left else slice(0, n)
            ids[b, at] = self.ids[r][:n]
            mask[b, at] = 1
            for k in extra:
                extra[k][b, at] = self.text_extra[k][r][:n]
            if not prompt_only:
                target[b, int(self.prompt_len[r]):n] = True
        out = {"input_ids": ids, "attention_mask": mask, **{"text." + k: v for k, v in extra.items()},
               **self._images(idx)}
        if not prompt_only:
            out["target_mask"] = target
            out["labels"] = ids[target]
        return out

    def candidates(self, row: int, suffixes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Question ``row``'s prompt followed by each candidate answer turn, one sequence per candidate
        (right-padded; ``target_mask`` marks each candidate's tokens): for ranking by likelihood."""
        n = int(self.prompt_len[row])
        prompt = self.ids[row][:n]
        width = n + max(len(s) for s in suffixes)
        k = len(suffixes)
        ids = torch.full((k, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((k, width), dtype=torch.long)
        target = torch.zeros((k, width), dtype=torch.bool)
        extra = {key: torch.zeros((k, width), dtype=v[0].dtype) for key, v in self.text_extra.items()}
        for c, s in enumerate(suffixes):
            ids[c, :n], ids[c, n:n + len(s)] = prompt, s
            mask[c, :n + len(s)] = 1
            target[c, n:n + len(s)] = True
            for key in extra:  # the answer turn is text: its token types are 0
                extra[key][c, :n] = self.text_extra[key][row][:n]
        images = self._images(torch.full((k,), row, dtype=torch.long))
        return {"input_ids": ids, "attention_mask": mask, "target_mask": target, "labels": ids[target],
                **{"text." + key: v for key, v in extra.items()}, **images}

    @staticmethod
    def concat(parts: list["GenerativeSplit"]) -> "GenerativeSplit":
        if len({p.task for p in parts}) != 1 or len({tuple(p.vocab) for p in parts}) != 1:
            raise ValueError("cannot concatenate generative splits of different label spaces")
        offsets = np.cumsum([0] + [len(p.pixels) for p in parts[:-1]])
        scored = {}
        if all(p.score_idx is not None for p in parts):
            a = max(p.score_idx.shape[1] for p in parts)
            pad = torch.nn.functional.pad
            scored = {"score_idx": torch.cat([pad(p.score_idx, (0, a - p.score_idx.shape[1]), value=-1) for p in parts]),
                      "score_val": torch.cat([pad(p.score_val, (0, a - p.score_val.shape[1])) for p in parts])}
        cached = all(p.image_tokens is not None for p in parts)
        return GenerativeSplit(
            ids=[t for p in parts for t in p.ids], prompt_len=torch.cat([p.prompt_len for p in parts]),
            text_extra={k: [t for p in parts for t in p.text_extra[k]] for k in parts[0].text_extra},
            image_index=torch.cat([p.image_index + int(o) for p, o in zip(parts, offsets)]),
            pixels=[d for p in parts for d in p.pixels],
            image_tokens=[t for p in parts for t in p.image_tokens] if cached else None,
            labels=torch.cat([p.labels for p in parts]), answers=[a for p in parts for a in p.answers],
            questions=[q for p in parts for q in p.questions],
            vocab=parts[0].vocab, pad_id=parts[0].pad_id, task=parts[0].task, **scored)


def _conversation(question, answer: str | None = None) -> list[dict]:
    turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if answer is not None:
        turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return turns


def answer_turns(processor, answers: list[str]) -> list[torch.Tensor]:
    """The tokens of each answer's assistant turn as the chat template renders it after the generation
    prompt (the answer and the end of turn): what training puts the loss on."""
    prompt = processor.apply_chat_template(_conversation("?"), add_generation_prompt=True, tokenize=False)
    out = []
    for a in answers:
        full = processor.apply_chat_template(_conversation("?", a), tokenize=False)
        out.append(torch.tensor(processor.tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]))
    return out


def _cut_question(tokenizer, question: str, max_len: int) -> str:
    ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    return question if len(ids) <= max_len else tokenizer.decode(ids[:max_len])


def render(processor, image: Image.Image, question: str, answer: str) -> tuple[dict[str, torch.Tensor], int]:
    """The processor's outputs for the whole conversation, and where the answer turn starts."""
    prompt = processor.apply_chat_template(_conversation(question), add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template(_conversation(question, answer), tokenize=False)
    if not full.startswith(prompt):
        raise ModelUnavailableError("the checkpoint's chat template renders the conversation differently with and "
                                    "without the generation prompt; fedvl cannot tell where the answer starts")
    enc = processor(text=[full], images=[[image]], return_tensors="pt")
    n_prompt = len(processor(text=[prompt], images=[[image]], return_tensors="pt")["input_ids"][0])
    if n_prompt >= enc["input_ids"].shape[1]:
        raise ModelUnavailableError(f"the checkpoint's chat template renders the answer {answer!r} as no tokens")
    return dict(enc), n_prompt


def encode_generative(questions: list[str], answers: list[list[str]], image_index: np.ndarray, image_at, n_images: int,
                      labels: np.ndarray, vocab: list[str], task: str, model, processor, max_len: int,
                      cache_dir: str | None, score_idx=None, score_val=None) -> GenerativeSplit:
    """Render every question (``image_at(row)``: the row's image, uint8 (H, W, 3)); the answer trained on
    is ``vocab[label]`` (or the first human answer where the label is outside the vocabulary)."""
    tok = processor.tokenizer
    ids, prompt_len, pixels = [], [], [None] * n_images
    extra: dict[str, list[torch.Tensor]] = {}
    for q, ans, row, label in zip(questions, answers, image_index.tolist(), labels.tolist()):
        image = Image.fromarray(image_at(row))
        answer = vocab[label] if label >= 0 else ans[0]
        enc, n_prompt = render(processor, image, _cut_question(tok, q, max_len), answer)
        length = enc["input_ids"].shape[1]
        ids.append(enc["input_ids"][0])
        prompt_len.append(n_prompt)
        for k, v in enc.items():
            if k not in _TEXT and v.dim() == 2 and v.shape == (1, length):
                extra.setdefault(k, []).append(v[0])
        if pixels[row] is None:
            pixels[row] = {k: v for k, v in enc.items() if k not in _TEXT and k not in extra}
    tokens = image_tokens(model, pixels, cache_dir) if model.cache_vision else None
    return GenerativeSplit(
        ids=ids, prompt_len=torch.tensor(prompt_len), text_extra=extra,
        image_index=torch.from_numpy(np.asarray(image_index, dtype=np.int64)), pixels=pixels,
        image_tokens=tokens, labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        answers=[[normalize_answer(a) for a in ans] for ans in answers], vocab=list(vocab),
        pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0, task=task,
        score_idx=None if score_idx is None else torch.from_numpy(score_idx),
        score_val=None if score_val is None else torch.from_numpy(score_val), questions=list(questions))


def image_tokens(model, pixels: list[dict[str, torch.Tensor]], cache_dir: str | None,
                 chunk: int = 16) -> list[torch.Tensor]:
    """The frozen vision side's output per image, from the cache when possible (key: the checkpoint's
    identity and the processed pixels)."""
    h = hashlib.sha256(model.vision_spec.key.encode())
    for d in pixels:
        for k in sorted(d):
            h.update(k.encode() + d[k].numpy().tobytes())
    path = Path(cache_dir) / "features" / f"{model.vision_spec.key}-{h.hexdigest()[:24]}.pt" if cache_dir else None
    if path is not None and path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if len(cached["tokens"]) == len(pixels):
                model.stacked_image_tokens = cached["stacked"]
                return cached["tokens"]
        except Exception:  # a truncated or corrupt cache file is recomputed, not trusted
            pass
    out: list[torch.Tensor] = []
    for start in range(0, len(pixels), chunk):
        part = pixels[start:start + chunk]
        batch = {k: torch.cat([d[k] for d in part]) for k in part[0]}
        out.extend(t.half().cpu() for t in model.image_features(batch))
    if path is not None:
        atomic_write(path, lambda tmp: torch.save({"tokens": out, "stacked": model.stacked_image_tokens}, tmp))
    return out


def encode_split_generative(split, model, processor, max_len: int, cache_dir: str | None) -> GenerativeSplit:
    """A synthetic benchmark split (:class:`fedvl.data.world.Split`)."""
    from fedvl.data.world import TASKS

    s = split.samples
    return encode_generative([x.question for x in s], [[x.answer] for x in s],
                             np.array([x.image for x in s], dtype=np.int64), lambda r: split.images[r],
                             len(split.images), split.labels, list(TASKS[split.task]), split.task, model, processor,
                             max_len, cache_dir)


def encode_real_generative(split, model, processor, max_len: int, cache_dir: str | None,
                           image_size: int) -> GenerativeSplit:
    """A real-format split (:class:`fedvl.data.real.splits.RealSplit`): images read from disk, resized."""
    from fedvl.data.real.encode import load_image

    answers = split.answers if split.answers else [[split.vocab[x]] if x >= 0 else [""] for x in split.labels]
    last: dict[int, np.ndarray] = {}

    def image_at(row: int) -> np.ndarray:  # questions come grouped by image: decode each one once in a row
        if row not in last:
            last.clear()
            last[row] = load_image(split.images[row], image_size)
        return last[row]

    return encode_generative(split.questions, answers, split.image_index, image_at,
                             len(split.images), split.labels, split.vocab, split.task, model, processor, max_len,
                             cache_dir, split.score_idx, split.score_val)
