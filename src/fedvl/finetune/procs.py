"""``run.client_procs=N``: one client's fit on N worker processes (data parallel, :mod:`fedvl.engine.shard`).

The pool starts once per run, when the first client trains, and stays warm across clients and rounds:
each worker holds a replica of the model (read once from a file the parent writes), its own rank's
device and ``run.threads // N`` threads. For every fit the parent sends what the one-process fit
starts from (the model's trainable, travelling and client-local parameters once the global and the
client's own state are in, the global parameters, the client's training data, its round) through a
file in the pool's folder; every rank runs the algorithm's own ``fit`` on its slice of each batch;
rank 0 sends back the :class:`FitResult` and the trained parameters, which go into the parent's model,
so the rest of :func:`fedvl.finetune.exchange.client_fit` (keeping the local state, what travels)
runs as in one process. The parent never takes part in a collective, so it can always stop the
pool: a worker's error (re-raised here with its own type and message), a worker that died, an
interrupt or the end of the run stops every worker; a worker whose parent is gone stops itself.

Backend: gloo on the CPU, NCCL on CUDA (rank r on the r-th GPU from ``run.device``'s).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import shutil
import tempfile
import time
import traceback
import weakref
from datetime import timedelta
from pathlib import Path

import torch

from fedvl.algorithms.base import ClientContext, FitResult
from fedvl.engine.device import rank_devices
from fedvl.models.params import get_params, set_params

_POLL_S = 0.5


def client_procs(fed) -> "ClientProcs":
    """The federation's pool, started on first use (and again after a failure stopped it)."""
    if fed.procs is None or fed.procs.closed:
        fed.procs = ClientProcs(fed)
    return fed.procs


class ClientProcs:
    """The worker processes of one federation (``fed.procs``); :meth:`close` (``fed.close()``) stops them."""

    def __init__(self, fed):
        import torch.multiprocessing as mp

        cfg = fed.cfg
        self.world = cfg.run.client_procs
        self.names = list(dict.fromkeys(fed.trainable + fed.down + fed.local))  # down: + stacking's bases
        devices = rank_devices(fed.amp.device, self.world)
        backend = "nccl" if devices[0].type == "cuda" else "gloo"
        self.closed = False
        self.dir = Path(tempfile.mkdtemp(prefix="fedvl-procs-"))
        torch.save(fed.model, self.dir / "model.pt")  # read once by every worker: no copy through a pipe
        # On the CPU, forkserver: a clean server process (no threads) imports torch and the model's modules
        # once, then forks every worker of this and any later pool in this process (forking this process
        # itself after torch started its threads is unsafe; spawn would import everything per worker).
        # '__main__' is not preloaded, so a script need not guard its top level. On CUDA, spawn: a process
        # forked after anything touched the CUDA driver cannot use it, and model loading dominates there.
        if backend == "nccl":
            spawn = mp.get_context("spawn")
        else:
            spawn = mp.get_context("forkserver")
            spawn.set_forkserver_preload(["fedvl.finetune.procs", "fedvl.finetune.exchange",
                                          *sorted({type(m).__module__ for m in fed.model.modules()})])
        self.results = spawn.Queue()
        self.tasks = [spawn.Queue() for _ in range(self.world)]
        threads = max(1, cfg.run.threads // self.world)
        init = f"file://{self.dir / 'rendezvous'}"
        self.procs = [spawn.Process(target=_worker, daemon=True, name=f"fedvl-client-rank{r}",
                                    args=(r, self.world, backend, init, str(devices[r]), threads,
                                          str(self.dir / "model.pt"), cfg, self.names, fed.travel, fed.trainable,
                                          self.tasks[r], self.results, os.getpid()))
                      for r in range(self.world)]
        # stops the workers when the pool is dropped or the interpreter exits without close()
        self._finalizer = weakref.finalize(self, _stop, self.procs, self.tasks, self.results, self.dir)
        try:
            for p in self.procs:
                p.start()
            ready = 0
            while ready < self.world:
                if self._next()[0] == "ready":
                    ready += 1
        except BaseException:
            self.close()
            raise

    def fit(self, ctx: ClientContext, lora_rank: int | None) -> FitResult:
        """``fed.client.fit(ctx)`` on the workers; the trained parameters end up in ``ctx.model``."""
        job = {"cid": ctx.client_id, "round": ctx.round, "state": get_params(ctx.model, self.names),
               "global": ctx.global_params, "data": ctx.train, "lora_rank": lora_rank,
               "progress": ctx.on_step is not None}
        path = self.dir / "fit.pt"
        try:
            torch.save(job, path)
            for q in self.tasks:
                q.put(str(path))
            while True:
                msg = self._next()
                if msg[0] == "step" and ctx.on_step is not None:
                    ctx.on_step(*msg[1:])
                elif msg[0] == "done":
                    res, state = torch.load(msg[1], weights_only=False)
                    set_params(ctx.model, state)
                    return res
        except BaseException:
            self.close()  # a worker may be waiting in a collective that will never complete
            raise

    def _next(self) -> tuple:
        """The next message from the workers; raises a worker's error, or when a worker has died."""
        while True:
            try:
                msg = self.results.get(timeout=_POLL_S)
            except queue.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(self.procs) if p.exitcode is not None]
                if not dead:
                    continue
                try:  # its last words may still be in the pipe
                    msg = self.results.get(timeout=1.0)
                except queue.Empty:
                    raise RuntimeError(f"run.client_procs: worker rank {dead[0][0]} stopped (exit code "
                                       f"{dead[0][1]})") from None
            if msg[0] == "error":
                _, rank, err, text = msg
                cause = RuntimeError(f"in run.client_procs worker rank {rank}:\n{text}")
                killed = self._killed(rank)
                if killed:  # the error is the peer's lost connection: name the worker that died
                    raise RuntimeError(f"run.client_procs: worker rank {killed[0]} stopped (exit code "
                                       f"{killed[1]}); rank {rank} then failed: {err}") from cause
                raise err from cause
            return msg

    def _killed(self, besides: int, wait_s: float = 1.0) -> tuple[int, int] | None:
        """A worker other than ``besides`` that died abnormally (within ``wait_s``: its exit may
        still be on its way), as (rank, exit code)."""
        deadline = time.monotonic() + wait_s
        while True:
            for r, p in enumerate(self.procs):
                if r != besides and p.exitcode not in (None, 0):
                    return r, p.exitcode
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def close(self) -> None:
        """Stop every worker (ask first, then terminate) and remove the pool's folder."""
        if not self.closed:
            self.closed = True
            self._finalizer()


def _stop(procs, tasks, results, folder: Path) -> None:
    for p, q in zip(procs, tasks):
        if p.is_alive():
            with contextlib.suppress(Exception):
                q.put(None)
    for p in procs:
        if p.pid is not None:
            p.join(timeout=5)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(timeout=2)
        if p.is_alive():
            p.kill()
            p.join()
    for q in [*tasks, results]:
        q.cancel_join_thread()  # never block on a pipe no one reads any more
        q.close()
    shutil.rmtree(folder, ignore_errors=True)


def _worker(rank: int, world: int, backend: str, init: str, device: str, threads: int, model_path: str, cfg,
            names: list[str], travel: list[str], trainable: list[str], tasks, results, parent: int) -> None:
    """One rank: join the group, load the replica, then train every client the parent sends."""
    import torch.distributed as dist

    from fedvl.algorithms import get_algorithm
    from fedvl.algorithms.hetlora import limited_rank
    from fedvl.engine.device import Amp
    from fedvl.engine.shard import Shard
    from fedvl.finetune.exchange import fit_context

    torch.set_num_threads(threads)
    try:
        dev = torch.device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend, init_method=init, rank=rank, world_size=world,
                                timeout=timedelta(minutes=30))
        model = torch.load(model_path, map_location=dev, weights_only=False)
        client = get_algorithm(cfg.algorithm.name).client(cfg)
        amp = Amp(dev, cfg.run.precision)
        shard = Shard(rank, world, dev if backend == "nccl" else torch.device("cpu"))  # NCCL reduces GPU tensors
        amp.sync_grads = shard.sync_grads
        results.put(("ready", rank))
        while True:
            try:
                path = tasks.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:  # the parent is gone (killed): nobody will stop us
                    return
                continue
            if path is None:
                return
            job = torch.load(path, weights_only=False)
            set_params(model, job["state"])
            on_step = None
            if rank == 0 and job["progress"]:
                def on_step(done: int, total: int, loss: float) -> None:
                    results.put(("step", done, total, loss))
            ctx = fit_context(cfg, model, job["cid"], job["round"], job["data"], job["global"], travel, trainable,
                              on_step, amp, shard)
            rank_of = job["lora_rank"]
            with limited_rank(model, trainable, rank_of) if rank_of else contextlib.nullcontext():
                res = client.fit(ctx)
            if rank == 0:
                out = Path(path).with_name("result.pt")
                torch.save((res, get_params(model, names)), out)
                results.put(("done", str(out)))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent reports it
        return
    except BaseException as e:
        results.put(("error", rank, _picklable(e), traceback.format_exc()))
    finally:
        with contextlib.suppress(Exception):
            if dist.is_initialized():
                dist.destroy_process_group()


def _picklable(e: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")

