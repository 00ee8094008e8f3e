"""One client trained on several processes (``run.client_procs``): this process's part of it.

Every rank walks the same seeded batch order as :func:`fedvl.engine.loops.train_local` and takes a
contiguous slice of each global batch. After every backward pass the gradients are summed over the
ranks, each weighted by its share of the batch's loss terms, so every rank holds the gradient of the
mean loss over the whole global batch and takes the same optimiser step: the result equals one
process training at that batch size, up to float rounding (and up to dropout masks, which are drawn
per process). The weights are counted each step, so the last, short batch is exact too.

A rank whose slice is empty (a batch with fewer rows than ranks) still runs the step, on a borrowed
row with weight 0: every rank must make the same collective calls in the same order.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

_BUCKET = 1 << 24  # elements per all-reduce: large enough to amortise the call, small enough to stay cheap in memory


def loss_terms(batch: dict[str, torch.Tensor]) -> int:
    """How many terms the step's mean loss averages: the answer tokens of a generative model's batch
    (``target_mask``; the first position predicts nothing), else one per row."""
    if "target_mask" in batch:
        return int(batch["target_mask"][:, 1:].sum())
    return len(batch["labels"])


class Shard:
    """Rank ``rank`` of ``world`` processes training one client together (the default process group);
    ``comm``: where its collectives' tensors live (the rank's GPU under NCCL, the CPU under gloo).
    ``share``: this rank's weight in the current step (its loss terms / the global batch's)."""

    def __init__(self, rank: int, world: int, comm: torch.device = torch.device("cpu")):
        self.rank, self.world, self.comm = rank, world, comm
        self.share = 1.0

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (empty when the batch has fewer rows than ranks)."""
        return torch.tensor_split(idx, self.world)[self.rank]

    def batch(self, data, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """This rank's part of the global batch ``idx`` of ``data``; sets :attr:`share` (one collective)."""
        mine = self.rows(idx)
        batch = data.batch(mine if len(mine) else idx[:1])
        terms = loss_terms(batch) if len(mine) else 0
        total = self._sum(torch.tensor([float(terms)], dtype=torch.float64))
        self.share = terms / float(total[0]) if float(total[0]) > 0 else 0.0
        return batch

    def mean(self, loss: float) -> float:
        """The global batch's mean loss from every rank's mean over its own slice."""
        return float(self._sum(torch.tensor([loss * self.share], dtype=torch.float64))[0])

    def sum_tensors(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each tensor summed over the ranks (every rank holds the same keys; reduced in sorted order,
        returned in ``values``' order)."""
        summed = {k: self._sum(values[k].detach().clone()) for k in sorted(values)}
        return {k: summed[k] for k in values}

    def sync_grads(self, optimizer: torch.optim.Optimizer) -> None:
        """Replace every gradient by the share-weighted sum over the ranks. A parameter that has a
        gradient on some rank gets one (zeros) on every rank, so all ranks step the same parameters;
        one without a gradient anywhere keeps none (AdamW skips it, as in one process)."""
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if not params:
            return
        has = self._sum(torch.tensor([p.grad is not None for p in params], dtype=torch.float32)).tolist()
        grads = []
        for p, h in zip(params, has):
            if h and p.grad is None:
                p.grad = torch.zeros_like(p)
            if h:
                grads.append(p.grad)
        by_kind: dict[tuple, list[torch.Tensor]] = {}
        for g in grads:
            by_kind.setdefault((g.dtype, g.device), []).append(g)
        for group in by_kind.values():
            start = 0
            while start < len(group):
                end, size = start, 0
                while end < len(group) and (end == start or size + group[end].numel() <= _BUCKET):
                    size += group[end].numel()
                    end += 1
                self._reduce_bucket(group[start:end])
                start = end

    def _reduce_bucket(self, grads: list[torch.Tensor]) -> None:
        flat = torch.cat([g.reshape(-1) for g in grads]).mul_(self.share)
        flat = self._sum(flat)
        at = 0
        for g in grads:
            g.copy_(flat[at:at + g.numel()].view_as(g))
            at += g.numel()

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        home = t.device
        t = t.to(self.comm)
        dist.all_reduce(t)
        return t.to(home)
