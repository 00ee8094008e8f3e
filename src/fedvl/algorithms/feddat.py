"""FedDAT: Federated Dual-Adapter Teacher.

Chen et al., "FedDAT: An Approach for Foundation Model Finetuning in
Multi-Modal Heterogeneous Federated Learning", AAAI 2024,
https://arxiv.org/abs/2308.12305 (reference code: HaokunChen245/FedDAT).

Every adapter site holds three adapters by role: ``shared`` (A_S, trained
locally and averaged by the server: the only thing that travels), ``local``
(A_C, never leaves the client) and ``teacher`` (Â_S, a frozen copy of A_S
taken when the round starts). Per mini-batch (Mutual Knowledge Distillation):

1. teacher pass, no grad: z_DAT from h + w·A_C(h) + (1-w)·Â_S(h);
2. A_S step: z_S from A_S alone; L_S = (1-λ)·CE(z_S, y) + λ·KD(z_S <- z_DAT);
3. A_C step: z' from the DAT mix with A_C trainable;
   L_DAT = (1-λ)·CE(z', y) + λ·KD(z' <- stopgrad(z_S)).

KD(s <- t) = T²·KL(softmax(t/T) || softmax(s/T)); λ = 0.5, T = 3, w = 0.5 by
default. The head and connector train in both steps and stay on the client.
Evaluation is personalised and reports three scores: DAT (A_C + Â_S with Â_S
= the freshly aggregated A_S; the headline ``acc``), A_C alone
(``acc_local``) and A_S alone (``acc_shared``). Evaluation never changes what
trains (the reference code's evaluation froze A_C for the rest of training).

Each client's round also reports the distillation itself (batch means, in the
round's ``train`` metrics): ``ce_shared`` / ``kd_shared`` (step 2: CE of z_S,
KD(z_S <- z_DAT)), ``ce_dat`` / ``kd_dat`` (step 3; no ``kd_dat`` without
mutual KD) and ``agree_shared_dat``, the share of the batch where z_S and its
teacher (z_DAT; A_C alone under ``feddat_teacher=local``) pick the same
answer. KD near 0 with agreement near 1 means the two adapters have learned
the same function and there is nothing left to distill.

Options: ``fedvl.options.feddat`` (``algorithm.dat_weight``, ``kd_weight``, ``kd_temperature``,
``feddat_teacher``, ``feddat_mutual``, ``feddat_shared_pass``).
"""

from __future__ import annotations

import torch

from fedvl.algorithms.base import Algorithm, ClientContext, ClientUpdate, FitResult, ServerRule, register
from fedvl.algorithms.losses import task_kd_parts
from fedvl.data.features import EncodedSplit
from fedvl.engine.loops import Batch, forward_logits, set_lr
from fedvl.engine.loops import evaluate as evaluate_split
from fedvl.models.params import param_group
from fedvl.options.feddat import FedDATOptions
from fedvl.schema import ConfigError, check_ranges


def copy_shared_to_teacher(model: torch.nn.Module) -> None:
    """Â_S <- A_S at every site (the frozen copy of the round's global adapter)."""
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in named.items():
            if param_group(name) == "adapter.shared":
                named[name.replace(".adapters.shared.", ".adapters.teacher.")].copy_(p)


class FedDATClient(ClientUpdate):
    # sums of the distillation diagnostics over the steps since make_step (one client's round: a client
    # instance trains one client at a time); kept on the model's device and read once per round, so the
    # step adds no device synchronisation beyond its loss.item()
    _diag: dict[str, torch.Tensor]
    _shard = None  # the round's Shard when the client trains on several processes (run.client_procs)

    def _note(self, **values: torch.Tensor) -> None:
        for k, v in values.items():
            if self._shard is not None:  # a slice's mean, weighted to sum (over the ranks) to the batch's
                v = v.detach() * self._shard.share
            self._diag[k] = self._diag[k] + v.detach() if k in self._diag else v.detach().clone()

    def fit(self, ctx: ClientContext) -> FitResult:
        res = super().fit(ctx)
        if ctx.shard is not None and self._diag:
            self._diag = ctx.shard.sum_tensors(self._diag)
        steps = res.metrics["steps"]  # every step notes every diagnostic once
        if steps:
            res.metrics.update({k: float(v) / steps for k, v in self._diag.items()})
        return res

    def _teacher_mix(self) -> dict[str, float]:
        a = self.cfg.algorithm
        if a.feddat_teacher == "local":  # ablation: no DAT, A_C alone teaches
            return {"local": 1.0}
        return {"local": a.dat_weight, "teacher": 1.0 - a.dat_weight}

    def _dat_mix(self) -> dict[str, float]:
        w = self.cfg.algorithm.dat_weight
        return {"local": w, "teacher": 1.0 - w}

    def make_step(self, ctx: ClientContext, optimizer: torch.optim.Optimizer):
        model, a, amp = ctx.model, self.cfg.algorithm, ctx.amp
        copy_shared_to_teacher(model)
        self._diag, self._shard = {}, ctx.shard

        def forward(batch: Batch, mix: dict[str, float], task: str) -> torch.Tensor:
            model.set_adapter_mix(mix)
            return forward_logits(model, batch, task)

        # The teacher pass (1) and the A_C pass (3) run the same encoder on the same input when the A_S step
        # (2) changes nothing the DAT pass reads: A_S is not in the DAT mix, and the head comes after the
        # encoder. Then one encoder forward (with A_C's graph) serves both, and only the head is re-applied.
        shared_pass = (a.feddat_shared_pass and a.feddat_teacher == "dat" and hasattr(model, "encode")
                       and {param_group(n) for n in ctx.trainable_names} <= {"adapter.shared", "adapter.local",
                                                                             "head"})

        def step(batch: Batch, lr: float, task: str = "vqa") -> float:

            set_lr(optimizer, lr)
            y = batch["labels"]
            # 1. teacher pass
            if shared_pass:
                model.set_adapter_mix(self._dat_mix())
                with amp.autocast():
                    h, mask, n_prompt = model.encode(batch["input_ids"], batch["attention_mask"], batch["features"])

                def dat_head() -> torch.Tensor:
                    return model.head[task](h, mask, text_len=batch["input_ids"].shape[1], text_start=n_prompt)

                with torch.no_grad(), amp.autocast():
                    z_dat = dat_head()
            else:
                with torch.no_grad(), amp.autocast():
                    z_dat = forward(batch, self._teacher_mix(), task)
            # 2. A_S (+ head, connector); A_C gets no gradient here, so AdamW skips it
            with amp.autocast():
                z_s = forward(batch, {"shared": 1.0}, task)
                loss_s, ce_s, kd_s = task_kd_parts(z_s.float(), y, z_dat.float(), a.kd_weight, a.kd_temperature)
            optimizer.zero_grad(set_to_none=True)
            amp.backward_step(loss_s, optimizer)
            # 3. A_C (+ head, connector) through the DAT mix; Â_S is frozen (not trainable)
            with amp.autocast():
                z_c = dat_head() if shared_pass else forward(batch, self._dat_mix(), task)
                teacher = z_s.detach().float() if a.feddat_mutual else None
                loss_c, ce_c, kd_c = task_kd_parts(z_c.float(), y, teacher, a.kd_weight, a.kd_temperature)
            if shared_pass:
                # with model.gradient_checkpointing the encoder recomputes h during this backward, with
                # the adapter mix of that moment: it must be the DAT mix h was computed with
                model.set_adapter_mix(self._dat_mix())
            optimizer.zero_grad(set_to_none=True)
            amp.backward_step(loss_c, optimizer)
            model.set_adapter_mix({"shared": 1.0})
            with torch.no_grad():
                agree = (z_s.argmax(-1) == z_dat.argmax(-1)).float().mean()
            self._note(ce_shared=ce_s, kd_shared=kd_s, ce_dat=ce_c, agree_shared_dat=agree,
                       **({"kd_dat": kd_c} if kd_c is not None else {}))
            return loss_s.item()

        return step

    def evaluate(self, ctx: ClientContext, data: EncodedSplit) -> dict[str, float]:
        model = ctx.model
        copy_shared_to_teacher(model)  # Â_S = the freshly aggregated global adapter
        scores = {}
        for key, mix in (("", self._dat_mix()), ("_local", {"local": 1.0}), ("_shared", {"shared": 1.0})):
            model.set_adapter_mix(mix)
            m = evaluate_split(model, data, amp=ctx.amp)
            if key == "":
                scores.update(m)
            else:
                scores.update({f"{k}{key}": m[k] for k in ("acc", "bal_acc", "vqa_score") if k in m})
        model.set_adapter_mix({"shared": 1.0})
        return scores


def check_options(cfg) -> None:
    """FedDAT's own options (``fedvl.options.feddat``), run when a config loads."""
    a = cfg.algorithm
    if cfg.model.peft != "adapter":
        raise ConfigError(f"feddat needs model.peft=adapter (its dual adapters), got model.peft={cfg.model.peft}")
    check_ranges(a, "algorithm.", list(FedDATOptions.RANGES))  # its OWNED ones, in their order


ALGORITHM = register(Algorithm(
    name="feddat",
    server=ServerRule,
    client=FedDATClient,
    summary="FedDAT: dual-adapter teacher + mutual KD; only the shared adapter travels (AAAI 2024)",
    adapter_roles=("shared", "local", "teacher"),
    trainable_roles=("shared", "local"),
    local_groups=frozenset({"adapter.local", "head", "connector"}),
    check=check_options,
))
