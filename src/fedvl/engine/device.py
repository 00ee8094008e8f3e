"""Where models compute (``run.device``) and in which precision (``run.precision``).

Only the compute moves: models, batches and the frozen vision tower's feature
extraction run on the chosen device, under autocast for bf16 / fp16. Everything
that leaves a model (travelling updates, per-client state, checkpoints, global
parameters) is a float32 CPU tensor (see :func:`fedvl.models.params.get_params`),
so aggregation and server validation stay exact and a run resumes on another device.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping

import torch

_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(ValueError):
    """A device or precision the machine cannot give; a ConfigError subclass re-raises it in one line."""


def check_spec(spec: str) -> None:
    if not _SPEC.match(spec):
        raise DeviceError(f"run.device must be auto, cpu, cuda or cuda:N, got {spec!r}")


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; raises DeviceError
    (one line) for a malformed spec or a GPU this machine does not have."""
    check_spec(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"run.device={spec}: no CUDA device on this machine (torch {torch.__version__}); "
                          f"use run.device=cpu or auto")
    dev = torch.device(spec)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"run.device={spec}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return dev


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in _DTYPES:
        raise DeviceError(f"run.precision must be fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        # float16 autocast on a CPU is slow and needs loss scaling the CPU path does not have
        raise DeviceError(f"run.precision=fp16 needs a CUDA device (run.device resolves to {device}); "
                          "use bf16 on a CPU")


class Amp:
    """Mixed precision on one device: ``autocast()`` around forward passes and losses,
    ``backward_step(loss, optimizer)`` for backward + optimiser step (with gradient
    scaling at fp16, so small float16 gradients do not flush to zero). fp32 is a no-op."""

    def __init__(self, device: torch.device | str = "cpu", precision: str = "fp32"):
        self.device = torch.device(device)
        check_precision(precision, self.device)
        self.precision = precision
        self.dtype = _DTYPES[precision]
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.sync_grads: Callable[[torch.optim.Optimizer], None] | None = None
        """Run between backward and the optimiser step: one client trained on several processes
        (``run.client_procs``) reduces its gradients there, before the scaler looks for overflows,
        so every rank skips or takes the same steps (:meth:`fedvl.engine.shard.Shard.sync_grads`)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            if self.sync_grads is not None:
                self.sync_grads(optimizer)
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if self.sync_grads is not None:  # the scaled gradients: every rank has the same scale
            self.sync_grads(optimizer)
        self.scaler.step(optimizer)  # skips the step when a gradient overflowed
        self.scaler.update()

    def __repr__(self) -> str:
        return f"Amp({self.device}, {self.precision})"


FP32_CPU = Amp()
"""What code that was not given an Amp uses: plain float32 on the CPU."""


def amp_for(device_spec: str, precision: str) -> Amp:
    return Amp(resolve_device(device_spec), precision)


def rank_devices(device: torch.device, world: int) -> list[torch.device]:
    """The devices of ``run.client_procs`` ranks training one client: all on the CPU, or one GPU
    each from ``device``'s on (``cuda:1`` and 2 ranks: cuda:1, cuda:2; NCCL wants distinct GPUs).
    Raises DeviceError when this machine has too few."""
    if device.type != "cuda":
        return [torch.device("cpu")] * world
    first = device.index or 0
    have = torch.cuda.device_count()
    if first + world > have:
        raise DeviceError(f"run.client_procs={world} from {device} needs cuda:{first}..cuda:{first + world - 1}, one "
                          f"GPU per process; this machine has {have} CUDA device(s)")
    return [torch.device("cuda", first + r) for r in range(world)]


def device_list(spec: str) -> tuple[str, int]:
    """A node's ``fedvl join --device``: one device, or GPUs in a row that train each client together
    (``cuda:0,1`` or ``cuda:0,cuda:1``: run.device=cuda:0 with run.client_procs=2). Returns (first, count)."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) == 1:
        return spec, 1
    index = []
    for i, p in enumerate(parts):
        m = re.fullmatch(r"cuda:(\d+)" if i == 0 else r"(?:cuda:)?(\d+)", p)
        if m is None:
            raise DeviceError(f"run.device: a list of devices names GPUs, e.g. cuda:0,1; got {spec!r}")
        index.append(int(m.group(1)))
    if index != list(range(index[0], index[0] + len(index))):
        raise DeviceError(f"run.device: a list of devices names GPUs in a row (cuda:K,K+1,...), got {spec!r}; "
                          "CUDA_VISIBLE_DEVICES renumbers them")
    return f"cuda:{index[0]}", len(index)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return dict(batch)
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@contextlib.contextmanager
def on_device(model: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
    """Run a CPU-resident model on ``device`` for a while and put it back (the FedMMKT task
    models: many clients, one GPU at a time)."""
    home = model_device(model)
    model.to(device)
    try:
        yield model
    finally:
        model.to(home)
