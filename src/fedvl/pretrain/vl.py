"""``fedvl pretrain vl``: cross-modal pretraining of the default model, as ViLT was pretrained.

ViLT (Kim et al. 2021, https://arxiv.org/abs/2102.03334) learns to read images and
text together with two objectives on image-caption pairs: image-text matching (ITM,
is this the image's caption?) and masked language modelling (MLM, a caption word
hidden and predicted from the rest and the image). Our default model joins two
unimodal encoders with a connector; without this step a federated "fine-tuning"
run mostly trains that glue from 72-144 questions per client. Here the connector,
a low-rank delta on every Linear of the MiniLM layers (W + B A, merged at load) and
the text LayerNorms learn on a public caption corpus in a style no client uses
(:mod:`fedvl.data.captions`), with ITM on hard negatives (one colour, shape, size,
position or count changed) and MLM through a head tied to MiniLM's word embeddings.

Resumable: a checkpoint every ``checkpoint_every`` steps holds the trainable state,
the optimiser, the schedule and every random state, so a killed run continues to
the same weights. Deterministic for a seed (and a thread count).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from fedvl.data.captions import NUMBERS, ROWS, CaptionSet, make_corpus
from fedvl.data.features import image_features
from fedvl.data.world import COLORS, COLUMNS, SHAPES, SIZES
from fedvl.io import atomic_write
from fedvl.models.backbones import VisionLanguageModel, build_model, load_tokenizer
from fedvl.models.vlbase import (
    _NOT_KEYED,
    VLPretrainConfig,
    base_state,
    layernorm_params,
    lowrank_targets,
    pretrain_key,
)
from fedvl.schema import ModelConfig

MATCH, MISMATCH = 0, 1  # the label order of world.TASKS["itm"]

# Caption words only the image decides (each one WordPiece token), by what they name. Masked-word
# accuracy on these with the caption's own image against another image measures grounding directly:
# the rest of the caption cannot tell "red" from "blue".
GROUNDED = {
    "colour": list(COLORS), "shape": SHAPES + ["circles", "squares", "triangles", "diamonds", "crosses"],
    "size": list(SIZES), "position": ROWS + COLUMNS, "number": NUMBERS,
}


class LowRank(nn.Module):
    """Parametrization W -> W + scale * B A (LoRA, Hu et al. 2021); B starts at zero, so W is unchanged."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: int):
        super().__init__()
        self.A = nn.Parameter(torch.randn(rank, in_features) / math.sqrt(in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        self.scale = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.B @ self.A)


class PretrainHeads(nn.Module):
    """ITM: ViLT's pooler (first token -> Linear -> tanh) and a 2-way classifier. MLM: BERT's
    transform (Linear -> GELU -> LayerNorm) and a decoder tied to the (frozen) word embeddings."""

    def __init__(self, hidden: int, vocab: int):
        super().__init__()
        self.itm = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        self.mlm = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.mlm_bias = nn.Parameter(torch.zeros(vocab))


class Encoded:
    """A caption set as tensors: token ids, masks, image rows, ITM labels and the images' features."""

    def __init__(self, corpus: CaptionSet, model: VisionLanguageModel, tokenizer, max_len: int,
                 cache_dir: str | None):
        tok = tokenizer(corpus.text, padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
        self.input_ids, self.attention_mask = tok["input_ids"], tok["attention_mask"]
        self.image = torch.tensor(corpus.image, dtype=torch.long)
        self.label = torch.tensor([MATCH if m else MISMATCH for m in corpus.match], dtype=torch.long)
        self.kind = list(corpus.kind)
        self.features = image_features(model, corpus.images, cache_dir)

    def other_image(self, rows: torch.Tensor) -> torch.Tensor:
        """Features of another image for each caption row (a fixed shift, never the caption's own)."""
        n = self.features.shape[0]
        return self.features[(self.image[rows] + max(1, n // 2)) % n].float()

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = self.attention_mask[idx]
        width = int(mask.sum(1).max())  # pad to this batch's longest caption, not the corpus's
        return self.input_ids[idx, :width], mask[:, :width], self.features[self.image[idx]].float()


def _mask_tokens(ids: torch.Tensor, attn: torch.Tensor, tokenizer, prob: float,
                 g: torch.Generator, grounded_prob: float | None = None,
                 grounded: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: ``prob`` of the caption tokens chosen; of those 80% [MASK], 10% random, 10% kept.

    ``grounded_prob``: the image-decided words (token ids ``grounded``, see ``GROUNDED``) are chosen
    with this probability instead.
    In our captions most tokens ("there", "is", "at the") follow from the text, so plain masking
    spends most of its signal where the image is not needed; ViLT's whole-word masking exists for
    the same reason (the text alone must not be enough)."""
    special = torch.tensor(tokenizer.all_special_ids)
    can = (attn == 1) & ~torch.isin(ids, special)
    p = torch.full(ids.shape, prob)
    if grounded_prob is not None:
        p[torch.isin(ids, grounded)] = grounded_prob
    chosen = (torch.rand(ids.shape, generator=g) < p) & can
    # at least one target per caption: an empty row would add nothing but cost a forward pass
    none = ~chosen.any(1)
    if none.any():
        score = torch.rand(ids.shape, generator=g).masked_fill(~can, -1.0)
        chosen[none, score[none].argmax(1)] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    out = ids.clone()
    r = torch.rand(ids.shape, generator=g)
    out[chosen & (r < 0.8)] = tokenizer.mask_token_id
    rand = chosen & (r >= 0.8) & (r < 0.9)
    out[rand] = torch.randint(1996, tokenizer.vocab_size, (int(rand.sum()),), generator=g)
    return out, labels


class Reader:
    """A model with the two pretraining heads, and what is measured with them: shared by pretraining
    (:class:`Pretrainer`) and the read-back of a saved base (:func:`held_out_report`)."""

    model: VisionLanguageModel
    heads: PretrainHeads
    device: torch.device

    def __init__(self, model: VisionLanguageModel, heads: PretrainHeads, tokenizer, device: torch.device):
        self.model, self.heads, self.tokenizer, self.device = model, heads, tokenizer, device
        self.grounded = {g: torch.tensor(tokenizer.convert_tokens_to_ids(ws)) for g, ws in GROUNDED.items()}

    def on_device(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Batches are made (and masked) on the CPU from the seeded generator, then moved."""
        return [t.to(self.device) for t in tensors]

    def itm_logits(self, ids, attn, feats) -> torch.Tensor:
        ids, attn, feats = self.on_device(ids, attn, feats)
        h, _, _ = self.model.encode(ids, attn, feats)
        return self.heads.itm(h[:, 0])

    def word_logits(self, h: torch.Tensor) -> torch.Tensor:
        """MLM scores over the vocabulary for output tokens ``h`` (N, hidden): the decoder is tied to
        the frozen word embeddings."""
        return self.heads.mlm(h) @ self.model.text.embeddings.word_embeddings.weight.T + self.heads.mlm_bias

    @torch.no_grad()
    def grounded_mlm(self, data: Encoded, shuffle_images: bool = False, limit: int = 512,
                     batch: int = 128) -> dict[str, float]:
        """Masked-word accuracy on one image-decided word (``GROUNDED``) per true caption, overall and
        per group. ``shuffle_images``: each caption is shown another image, so what accuracy remains
        came from the text (word frequencies, the other words) and not from looking."""
        was = self.model.training
        self.model.eval()
        pos = torch.nonzero(data.label == MATCH).squeeze(1)[:limit]
        g = torch.Generator().manual_seed(4321)  # the same masked word with either image
        hits: dict[str, list[bool]] = {k: [] for k in GROUNDED}
        for i in range(0, len(pos), batch):
            rows = pos[i:i + batch]
            ids, attn, feats = data.batch(rows)
            if shuffle_images:
                feats = data.other_image(rows)
            group = torch.full(ids.shape, -1)
            for k, vocab in enumerate(self.grounded.values()):
                group[torch.isin(ids, vocab) & (attn == 1)] = k
            score = torch.rand(ids.shape, generator=g).masked_fill(group < 0, -1.0)
            keep = score.max(1).values >= 0  # captions with at least one grounded word
            if not keep.any():
                continue
            r, at = torch.nonzero(keep).squeeze(1), score.argmax(1)[keep]  # one masked word per caption
            ids, attn, feats = ids[r], attn[r], feats[r]
            masked = ids.clone()
            masked[torch.arange(len(r)), at] = self.tokenizer.mask_token_id
            ids_d, attn_d, feats_d = self.on_device(masked, attn, feats)
            h, _, _ = self.model.encode(ids_d, attn_d, feats_d)
            rows_d = torch.arange(len(r), device=h.device)
            logits = self.word_logits(h[rows_d, at.to(h.device)])
            right = (logits.argmax(1).cpu() == ids[torch.arange(len(r)), at]).tolist()
            for ok, grp in zip(right, group[r, at].tolist()):
                hits[list(GROUNDED)[grp]].append(ok)
        self.model.train(was)
        out = {k: sum(v) / len(v) for k, v in hits.items() if v}
        every = [x for v in hits.values() for x in v]
        out["all"] = sum(every) / max(len(every), 1)
        return out


class Pretrainer(Reader):
    """The model with its low-rank deltas, the two heads, and the two objectives."""

    def __init__(self, cfg: VLPretrainConfig, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        mcfg = ModelConfig(name=cfg.model, vision_tokens=cfg.vision_tokens, peft="head", base="raw")
        self.model = build_model(mcfg, num_answers=2, image_size=cfg.image_size, seed=cfg.seed)
        self.tokenizer = load_tokenizer()
        torch.manual_seed(cfg.seed + 2)
        self.targets = lowrank_targets(self.model.text, cfg.lora_targets)
        for lin in self.targets.values():
            parametrize.register_parametrization(
                lin, "weight", LowRank(lin.out_features, lin.in_features, cfg.lora_rank, cfg.lora_alpha))
        hidden = self.model.text.config.hidden_size
        self.heads = PretrainHeads(hidden, self.model.text.embeddings.word_embeddings.weight.shape[0])
        # built (and initialised) on the CPU, then moved: the same start on every device
        self.model.to(self.device)
        self.heads.to(self.device)
        self.model.requires_grad_(False)
        self.params = list(self.model.connector.parameters()) + list(layernorm_params(self.model.text).values())
        self.params += [p for lin in self.targets.values() for p in lin.parametrizations.weight[0].parameters()]
        self.params += list(self.heads.parameters())
        for p in self.params:
            p.requires_grad_(True)
        Reader.__init__(self, self.model, self.heads, self.tokenizer, self.device)
        self.grounded_all = torch.cat(list(self.grounded.values()))

    def mlm_loss(self, ids, attn, feats, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy over the vocabulary at the masked caption tokens; also their accuracy."""
        ids, attn, feats, labels = self.on_device(ids, attn, feats, labels)
        h, _, _ = self.model.encode(ids, attn, feats)
        at = labels != -100
        logits = self.word_logits(h[:, : ids.shape[1]][at])
        return nn.functional.cross_entropy(logits, labels[at]), (logits.argmax(1) == labels[at]).float().mean()

    def deltas(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(A, scale x B) per adapted Linear: the shipped form, merged as W + B A."""
        out = {}
        for name, lin in self.targets.items():
            lr = lin.parametrizations.weight[0]
            out[name] = (lr.A.detach().cpu().clone(), (lr.B * lr.scale).detach().cpu().clone())
        return out

    @torch.no_grad()
    def evaluate(self, data: Encoded, batch: int = 128) -> dict[str, float]:
        """Held-out ITM accuracy (every caption) and MLM accuracy (a fixed masking of the true ones)."""
        self.model.eval()
        hits, n = 0, len(data.label)
        for i in range(0, n, batch):
            idx = torch.arange(i, min(i + batch, n))
            hits += int((self.itm_logits(*data.batch(idx)).argmax(1).cpu() == data.label[idx]).sum())
        pos = torch.nonzero(data.label == MATCH).squeeze(1)[:512]
        g = torch.Generator().manual_seed(1234)
        accs = []
        for i in range(0, len(pos), batch):
            ids, attn, feats = data.batch(pos[i:i + batch])
            masked, labels = _mask_tokens(ids, attn, self.tokenizer, self.cfg.mlm_prob, g)
            accs.append(float(self.mlm_loss(masked, attn, feats, labels)[1]))
        own, other = self.grounded_mlm(data), self.grounded_mlm(data, shuffle_images=True)
        self.model.train()
        return {"itm_acc": hits / max(n, 1), "mlm_acc": sum(accs) / max(len(accs), 1),
                "grounded_acc": own["all"], "grounded_acc_other_image": other["all"],
                "grounded": {"own_image": own, "other_image": other}}

def swap_images(data: Encoded, idx: torch.Tensor, feats: torch.Tensor, target: torch.Tensor, share: float,
                g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """ViLT's ITM negatives: a ``share`` of the true captions meets another image (label MISMATCH).

    Count captions are left alone: "there are no red objects" holds for many images, so a
    swapped one would often be a false negative. A scene, object or relation caption names
    colour, shape and (scene, object) size and cell of an object, which a random other image of
    the corpus rarely shows: the few false negatives left are label noise, not a shortcut."""
    draw = torch.rand(len(idx), generator=g) < share
    other = torch.randint(1, max(2, data.features.shape[0]), (len(idx),), generator=g)
    swap = draw & (target == MATCH) & torch.tensor([data.kind[int(i)] != "count" for i in idx])
    if not swap.any():
        return feats, target
    feats, target = feats.clone(), target.clone()
    new_img = (data.image[idx[swap]] + other[swap]) % data.features.shape[0]  # never the caption's own
    feats[swap] = data.features[new_img].float()
    target[swap] = MISMATCH
    return feats, target


def _checkpoint_state(pt: Pretrainer, opt, sched, g: torch.Generator, step: int, log: dict) -> dict:
    # device-free: a pretraining resumes on another device (torch.load maps to the CPU; copy_ moves back)
    opt_state = opt.state_dict()
    opt_state["state"] = {k: {n: v.cpu() if torch.is_tensor(v) else v for n, v in s.items()}
                          for k, s in opt_state["state"].items()}
    return {"step": step, "params": [p.detach().cpu().clone() for p in pt.params], "opt": opt_state,
            "sched": sched.state_dict(), "gen": g.get_state(), "torch_rng": torch.get_rng_state(),
            "log": log, "settings": {k: v for k, v in asdict(pt.cfg).items() if k not in _NOT_KEYED}}


def _read_checkpoint(path: Path, pt: Pretrainer) -> dict | None:
    """The state in ``path`` if it is a checkpoint of this pretraining (its settings, its parameter
    shapes), else None: checked before anything is restored, so a bad one leaves the fresh start intact."""
    try:
        # weights only: tensors and plain containers; a full unpickle would run any code planted in the file
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated or not a checkpoint at all: torch raises many kinds
        return None
    settings = {k: v for k, v in asdict(pt.cfg).items() if k not in _NOT_KEYED}
    if not isinstance(state, dict) or state.get("settings") != settings or not isinstance(state.get("step"), int) \
            or not isinstance(state.get("params"), list) or len(state["params"]) != len(pt.params) \
            or any(not torch.is_tensor(v) or v.shape != p.shape for v, p in zip(state["params"], pt.params)) \
            or not {"opt", "sched", "gen", "torch_rng", "log"} <= state.keys():
        return None
    return state


def pretrain(cfg: VLPretrainConfig, status: Callable[[str], None] = print,
             on_step: Callable[[int, int, float], None] | None = None, force: bool = False) -> tuple[Path, dict]:
    """Pretrain (or resume) and write ``<cache_dir>/vl/<key>.safetensors`` + ``.json`` + ``.png``."""
    key = pretrain_key(cfg)
    out_dir = Path(cfg.cache_dir) / "vl"
    out = out_dir / f"{key}.safetensors"
    ckpt = out_dir / f"{key}.ckpt"
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    from fedvl.engine.device import resolve_device

    pt = Pretrainer(cfg, resolve_device(cfg.device))
    status(f"rendering the caption corpus: {cfg.corpus_images} images x {cfg.captions_per_image} captions "
           f"(+ {cfg.held_out_images} held-out images)")
    corpus = make_corpus(cfg.corpus_images, cfg.captions_per_image, cfg.image_size, 1_000_003 + cfg.seed,
                         cfg.max_objects, count_negatives=cfg.count_negatives)
    held = make_corpus(cfg.held_out_images, 2, cfg.image_size, 2_000_003 + cfg.seed, cfg.max_objects,
                       count_negatives=cfg.count_negatives)
    cache = str(Path(cfg.cache_dir) / "features")
    train, test = (Encoded(c, pt.model, pt.tokenizer, cfg.max_text_len, cache) for c in (corpus, held))
    positives = torch.nonzero(train.label == MATCH).squeeze(1)
    opt = torch.optim.AdamW(pt.params, lr=cfg.lr, weight_decay=0.01)
    warm = max(1, int(cfg.warmup * cfg.steps))

    def schedule(s: int) -> float:  # linear warm-up, then cosine to zero
        return (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, cfg.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    g = torch.Generator().manual_seed(cfg.seed)
    log: dict[str, list] = {"itm_loss": [], "mlm_loss": [], "eval": []}
    start, elapsed_before = 0, 0.0
    if ckpt.is_file() and not force:
        state = _read_checkpoint(ckpt, pt)
        if state is None:  # a damaged checkpoint: start over rather than fail
            status(f"ignoring the damaged checkpoint {ckpt}; starting over")
        else:
            with torch.no_grad():
                for p, v in zip(pt.params, state["params"]):
                    p.copy_(v)
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            g.set_state(state["gen"])
            torch.set_rng_state(state["torch_rng"])
            start, log = state["step"], state["log"]
            elapsed_before = log.get("seconds", 0.0)
            status(f"resuming pretraining {key} at step {start}/{cfg.steps}")
    pt.model.train()
    t_train = time.perf_counter()
    for step in range(start + 1, cfg.steps + 1):
        idx = torch.randint(0, len(train.label), (cfg.batch_size,), generator=g)
        ids, attn, feats = train.batch(idx)
        target = train.label[idx].clone()
        if cfg.itm_swap > 0:
            feats, target = swap_images(train, idx, feats, target, cfg.itm_swap, g)
        itm = nn.functional.cross_entropy(pt.itm_logits(ids, attn, feats), target.to(pt.device))
        pidx = positives[torch.randint(0, len(positives), (cfg.batch_size,), generator=g)]
        ids, attn, feats = train.batch(pidx)
        masked, labels = _mask_tokens(ids, attn, pt.tokenizer, cfg.mlm_prob, g, cfg.mlm_grounded_prob,
                                      pt.grounded_all)
        mlm, _ = pt.mlm_loss(masked, attn, feats, labels)
        loss = cfg.itm_weight * itm + cfg.mlm_weight * mlm
        if not torch.isfinite(loss):
            raise FloatingPointError(f"VL pretraining diverged at step {step} (itm {itm.item()}, mlm {mlm.item()})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(pt.params, 1.0)
        opt.step()
        sched.step()
        log["itm_loss"].append(round(itm.item(), 5))
        log["mlm_loss"].append(round(mlm.item(), 5))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            log["eval"].append({"step": step, **pt.evaluate(test)})
            e = log["eval"][-1]
            status(f"step {step}: held-out ITM accuracy {100 * e['itm_acc']:.1f}%, "
                   f"masked-word accuracy {100 * e['mlm_acc']:.1f}%, image-decided words "
                   f"{100 * e['grounded_acc']:.1f}% (another image: {100 * e['grounded_acc_other_image']:.1f}%)")
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            log["seconds"] = elapsed_before + time.perf_counter() - t_train
            state = _checkpoint_state(pt, opt, sched, g, step, log)
            atomic_write(ckpt, lambda tmp: torch.save(state, tmp))
        if on_step:
            on_step(step, cfg.steps, loss.item())
    train_seconds = elapsed_before + time.perf_counter() - t_train
    final = log["eval"][-1] if log["eval"] else pt.evaluate(test)
    meta = {
        "key": key, "settings": {k: v for k, v in asdict(cfg).items() if k not in _NOT_KEYED},
        "corpus": {"images": cfg.corpus_images, "captions": len(train.label), "held_out_images":
                   cfg.held_out_images, "held_out_captions": len(test.label), "style": "gallery"},
        "steps": cfg.steps, "held_out_itm_acc": final["itm_acc"], "held_out_mlm_acc": final["mlm_acc"],
        # per group of image-decided words: what looking adds over the other words (docs/results.md)
        "held_out_grounded": final["grounded"],
        "eval": log["eval"], "itm_loss": log["itm_loss"], "mlm_loss": log["mlm_loss"],
        "train_seconds": round(train_seconds, 1), "total_seconds": round(time.perf_counter() - t_start, 1),
        "trained_params": sum(p.numel() for p in pt.params) - sum(p.numel() for p in pt.heads.parameters()),
    }
    save_base(pt, out, meta)
    ckpt.unlink(missing_ok=True)
    return out, meta


def cached_base(cfg: VLPretrainConfig, status: Callable[[str], None] = print) -> tuple[Path, dict] | None:
    """The cached result of these settings, ``(weights, report)``, or None when there is none or it is
    damaged (said through ``status``): the key fixes the result, so a damaged entry is pretrained again."""
    from safetensors import SafetensorError, safe_open

    key = pretrain_key(cfg)
    out = Path(cfg.cache_dir) / "vl" / f"{key}.safetensors"
    if not out.is_file():
        return None
    try:
        with safe_open(str(out), "pt") as f:
            f.keys()
        meta = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
        # what `fedvl pretrain vl` prints and draws from the report
        if not isinstance(meta, dict) or meta.get("key") != key or not \
                {"held_out_itm_acc", "held_out_mlm_acc", "itm_loss", "mlm_loss", "eval"} <= meta.keys():
            raise ValueError("not this pretraining's report")
    except (SafetensorError, OSError, ValueError) as e:
        status(f"ignoring the damaged cached base {out} ({type(e).__name__}); pretraining again")
        return None
    if not out.with_suffix(".png").is_file():  # only the picture of the report: drawn again from it
        plot_curves(meta, out.with_suffix(".png"))
    return out, meta


def save_base(pt: Pretrainer, path: Path, meta: dict) -> None:
    """float16 safetensors (connector, LayerNorms, low-rank deltas, and the ITM and MLM heads, which
    fine-tuning ignores but the held-out report reads back) + the JSON report + the PNG."""
    from safetensors.torch import save_file

    state = base_state(pt.model, pt.deltas())
    state.update({f"itm.{k}": v.detach().float() for k, v in pt.heads.itm.state_dict().items()})
    state.update({f"mlm.{k}": v.detach().float() for k, v in pt.heads.mlm.state_dict().items()})
    state["mlm.bias"] = pt.heads.mlm_bias.detach().float()
    state = {k: v.to("cpu", torch.float16).contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"key": meta["key"]}))
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
    plot_curves(meta, path.with_suffix(".png"))


def plot_curves(meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def smooth(xs: list[float], k: int = 25) -> list[float]:
        return [sum(xs[max(0, i - k + 1):i + 1]) / len(xs[max(0, i - k + 1):i + 1]) for i in range(len(xs))]

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(smooth(meta["itm_loss"]), label="ITM loss")
    a.plot(smooth(meta["mlm_loss"]), label="MLM loss")
    a.set_xlabel("step")
    a.set_title("training loss (running mean of 25 steps)")
    a.legend()
    ev = meta["eval"]
    b.plot([e["step"] for e in ev], [100 * e["itm_acc"] for e in ev], "o-", label="ITM accuracy")
    b.plot([e["step"] for e in ev], [100 * e["mlm_acc"] for e in ev], "s-", label="MLM accuracy")
    b.axhline(50, color="grey", lw=0.8, ls="--")
    b.set_xlabel("step")
    b.set_ylabel("%")
    b.set_title("held-out captions")
    b.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


@torch.no_grad()
def held_out_report(path: Path, cfg: VLPretrainConfig, images: int | None = None,
                    shuffle_images: bool = False) -> dict[str, float]:
    """Held-out numbers of a saved base, read back from the file: the model built as fine-tuning builds
    it (delta merged) plus the heads stored beside it.

    ``itm_acc`` overall and per caption kind (hard negatives); ``itm_acc_image_swapped``: each true
    non-count caption with its own image and with another (ViLT's easy negatives); ``grounded_*``:
    masked image-decided words with the caption's own image and with another (bases saved with
    their MLM head). ``shuffle_images``: every caption is shown another image (a fixed shift), so
    what ITM accuracy remains was read from the caption's text alone (a shortcut, not matching)."""
    from fedvl.models.vlbase import read_base

    state, _ = read_base(path)
    mcfg = ModelConfig(name=cfg.model, vision_tokens=cfg.vision_tokens, peft="head", base="vl",
                       base_weights=str(path))
    model = build_model(mcfg, num_answers=2, image_size=cfg.image_size, seed=cfg.seed).eval()
    vocab = model.text.embeddings.word_embeddings.weight.shape[0]
    heads = PretrainHeads(model.text.config.hidden_size, vocab)
    heads.itm.load_state_dict({k[len("itm."):]: v.float() for k, v in state.items() if k.startswith("itm.")})
    has_mlm = "mlm.bias" in state  # the first shipped base kept only its ITM head
    if has_mlm:
        heads.mlm.load_state_dict({k[len("mlm."):]: v.float() for k, v in state.items()
                                   if k.startswith("mlm.") and k != "mlm.bias"})
        heads.mlm_bias.data.copy_(state["mlm.bias"].float())
    reader = Reader(model, heads.eval(), load_tokenizer(), torch.device("cpu"))
    held = make_corpus(images or cfg.held_out_images, 2, cfg.image_size, 2_000_003 + cfg.seed, cfg.max_objects,
                       count_negatives=cfg.count_negatives)
    data = Encoded(held, model, reader.tokenizer, cfg.max_text_len, None)
    right = []
    for i in range(0, len(data.label), 128):
        idx = torch.arange(i, min(i + 128, len(data.label)))
        ids, attn, feats = data.batch(idx)
        pred = reader.itm_logits(ids, attn, data.other_image(idx) if shuffle_images else feats).argmax(1)
        right += (pred == data.label[idx]).tolist()
    out = {"itm_acc": sum(right) / len(right), "pairs": len(right)}
    for kind in sorted(set(held.kind)):
        hits = [r for r, k in zip(right, held.kind) if k == kind]
        out[f"itm_acc_{kind}"] = sum(hits) / len(hits)
    if shuffle_images:
        return out
    rows = torch.nonzero(torch.tensor([m and k != "count" for m, k in zip(held.match, held.kind)])).squeeze(1)
    other = []
    for i in range(0, len(rows), 128):
        idx = rows[i:i + 128]
        ids, attn, _ = data.batch(idx)
        other += (reader.itm_logits(ids, attn, data.other_image(idx)).argmax(1) == MISMATCH).tolist()
    own = [right[int(i)] for i in rows]
    out["itm_acc_image_swapped"] = (sum(own) + sum(other)) / max(2 * len(rows), 1)
    if has_mlm:
        own_g, other_g = reader.grounded_mlm(data), reader.grounded_mlm(data, shuffle_images=True)
        out.update({f"grounded_{k}": v for k, v in own_g.items()})
        out.update({f"grounded_other_image_{k}": v for k, v in other_g.items()})
    return out
