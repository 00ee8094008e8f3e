"""Flower runtime: the same Strategy and ClientUpdate inside a Flower ServerApp / ClientApp.

Flower's Message API (flwr 1.42, pinned in pyproject.toml) carries the round; fedvl's own pieces do the
work, so there is no second copy of any algorithm:

- ServerApp (``server_main``): asks every node which partition it holds (a
  ``query`` message), then per round samples clients with the strategy, sends
  ``train`` messages carrying the global travelling parameters, validates and
  aggregates the replies with ``server_aggregate``, and sends ``evaluate``
  messages. Records go to the same ``metrics.jsonl`` as the in-process simulator.
- ClientApp (``client_train`` / ``client_eval``): builds the model and *its own*
  partition's data, then runs ``client_fit`` / ``client_evaluate``. Client-local
  state (FedDAT's A_C, heads, local-only models) lives in a per-node store on
  disk between rounds and is never sent.
- ``run.secagg=true``: the train round runs through Flower's SecAgg+ instead
  (:mod:`fedvl.transport.secagg`); the server then sees only the aggregate.

What a message carries and which server and client sides run it are the algorithm's exchange
family's (:mod:`fedvl.rounds.family`: its codec, server and node).

Randomness is derived from (seed, round, client) in every runtime, so the same
config gives the same per-round metrics here as in the simulator.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fedvl.transport.flower_env import FLOWER_ENV  # noqa: F401  (first: before flwr is imported)

# isort: split
import torch
import yaml
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedvl.algorithms.aggregate import Params
from fedvl.config import load_config_dict
from fedvl.report.history import History
from fedvl.schema import ConfigError, ExperimentConfig, dump_config
from fedvl.transport import secagg
from fedvl.finetune.exchange import SecureSum, client_fit
from fedvl.rounds.family import family_of
from fedvl.rounds.loop import run_rounds as loop_rounds
from fedvl.rounds.state import ClientStateStore, RoundedStateStore
from fedvl.transport.wire import (  # noqa: F401  (from_record, to_record: read from here too)
    from_record,
    read_scores,
    scores_record,
    to_record,
)
from fedvl.deploy.names import CONFIG_KEY, DEVICE_KEY, RUN_TOKEN_KEY, STATE_KEY


class FlowerRunError(RuntimeError):
    """The federation cannot continue (too few clients answered); the message says why."""


# ---------------------------------------------------------------- config


def cfg_from_text(text: str) -> ExperimentConfig:
    return load_config_dict(yaml.safe_load(text) or {})


# ---------------------------------------------------------------- client side

# one built federation (of either exchange family) per (config, partition, device) and process
_FEDS: dict[tuple[str, int, str], Any] = {}


def _partition(context: Context) -> int:
    try:
        return int(context.node_config["partition-id"])
    except (KeyError, ValueError):
        raise ConfigError("this node has no integer partition-id in its node config "
                          "(start it with `fedvl join --partition i`)") from None


def node_device(device: str) -> tuple[str, int]:
    """A node's ``--device`` as (run.device, processes per client): ``cuda:0,1`` -> (cuda:0, 2)."""
    from fedvl.engine.device import DeviceError, device_list

    try:
        return device_list(device)
    except DeviceError as e:
        raise ConfigError(str(e).replace("run.device", "--device")) from None


def _client_federation(cfg_text: str, pid: int, every_partition: bool, device: str = "", run: str = ""):
    """A deployed node builds its own partition only; a simulation worker serves every
    partition in turn, so it builds them all once (vision features come from the disk cache).
    ``device``: the node's own choice (``fedvl join --device``), over the run's run.device.
    The algorithm's exchange family builds it (:meth:`fedvl.rounds.family.Family.build_node`: a
    knowledge-exchange node builds its clients' data and task models, never the server's generator
    or judge). ``run``: the run it serves; a process that outlives runs (a deployed node's warm
    executor) builds afresh for a new run, so nothing one run left in memory reaches the next."""
    key = (hashlib.sha256(cfg_text.encode()).hexdigest(), -1 if every_partition else pid, device, run)
    if key not in _FEDS:
        for old in _FEDS.values():  # one run per process at a time: do not keep an old model (or its workers) alive
            old.close()
        _FEDS.clear()
        cfg = cfg_from_text(cfg_text)
        if device:
            cfg.run.device, procs = node_device(device)
            if procs > 1:  # `fedvl join --device cuda:0,1`: this node trains each client on both GPUs
                cfg.run.client_procs = procs
        family = family_of(cfg.algorithm.name)
        family.check(cfg)  # (a node's device list may have set run.client_procs)
        _FEDS[key] = family.build_node(cfg, None if every_partition else [pid])
    fed = _FEDS[key]
    if not 0 <= pid < len(fed.client_ids):
        raise ConfigError(f"this node holds partition {pid}, but the experiment has partitions "
                          f"0..{len(fed.client_ids) - 1}")
    return fed


def _state_store(context: Context, cfg_text: str, sim_root: str | None) -> ClientStateStore:
    """Where this node keeps its clients' local state: the run folder's ``client_states``
    in a simulation; in a deployment, a folder per run under the node's ``state-dir``, so
    a new run never starts from an old run's local state."""
    if sim_root:
        return ClientStateStore(Path(sim_root))
    root = context.node_config.get(STATE_KEY) or str(Path.home() / ".cache" / "fedvl" / "node-state")
    # the run's token outlives a server restart (`fedvl serve --resume`), Flower's run id does not
    run = f"run-{context.run_config.get(RUN_TOKEN_KEY) or context.run_id}-" \
          f"{hashlib.sha256(cfg_text.encode()).hexdigest()[:8]}"
    return RoundedStateStore(Path(str(root)) / run)


def make_client_app(cfg_text: str | None = None, state_root: str | None = None,
                    fed=None, progress=None) -> ClientApp:
    """A ClientApp running fedvl's client half.

    - ``fed`` (Flower simulation, in-process backend): every virtual node uses this one
      built federation, one message at a time, as the simulator does;
    - ``cfg_text`` (Flower simulation, Ray backend): each worker builds the federation once;
    - neither (deployment): the config comes with the run, the node's partition and
      state folder from its node config.
    """
    app = ClientApp()

    def federation(context: Context) -> tuple[str, Any, str]:
        pid = _partition(context)
        if fed is not None:
            built, text = fed, ""
        else:
            text = cfg_text or str(context.run_config[CONFIG_KEY])
            built = _client_federation(text, pid, every_partition=cfg_text is not None,
                                       device=str(context.node_config.get(DEVICE_KEY, "")),
                                       run=str(context.run_config.get(RUN_TOKEN_KEY) or context.run_id))
        return text, built, built.client_ids[pid]

    def setup(context: Context, to: str):
        text, built, cid = federation(context)
        if to != cid:
            raise ConfigError(f"a message for client {to} reached the node of {cid}")
        return built, _state_store(context, text, state_root), cid

    def node_of(built, store: ClientStateStore):
        family = family_of(built.cfg.algorithm.name)
        return family.node(built, store), family.codec()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        if msg.content["config"].get(WARM_UP):  # the server's head start (WarmUp): build now, answer nothing;
            try:  # a node that cannot serve the run says so to the server's real query (discover)
                federation(context)
            except Exception:  # noqa: BLE001
                pass
            return Message(RecordDict({"config": ConfigRecord({})}), reply_to=msg)
        _, built, cid = federation(context)
        info: dict[str, Any] = {"cid": cid}
        if built.cfg.run.secagg:  # SecAgg+ scales every weight by the largest client's sample count
            info["num-train"] = len(built.train[cid])
        return Message(RecordDict({"config": ConfigRecord(info)}), reply_to=msg)

    @app.train(mods=[secagg.client_mod])
    def train(msg: Message, context: Context) -> Message:
        if secagg.is_secure(msg):  # SecAgg+'s masked-vector stage: the mod masks what this returns
            config, global_params = secagg.read_fitins(msg)
            fed, store, cid = setup(context, str(config["cid"]))
            res = client_fit(fed, store.at(int(config["round"]), fit=True), cid, int(config["round"]), global_params)
            return secagg.masked_reply(msg, fed.cfg, cid, int(config["round"]), global_params, res.params,
                                       res.num_examples, {k: float(v) for k, v in res.metrics.items()})
        built, store, cid = setup(context, str(msg.content["config"]["cid"]))
        node, codec = node_of(built, store)
        rnd = int(msg.content["config"]["round"])
        if progress:  # in-process simulation: the ClientApp shares the terminal's progress display
            progress.client_start(rnd, cid)
        reply = node.fit(cid, rnd, codec.read_down(msg.content), progress.step if progress else None)
        return Message(RecordDict(codec.reply(reply)), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        built, store, cid = setup(context, str(msg.content["config"]["cid"]))
        node, codec = node_of(built, store)
        scores = node.evaluate(cid, int(msg.content["config"]["round"]), codec.read_eval_down(msg.content))
        return Message(RecordDict(scores_record(scores)), reply_to=msg)

    return app


# ---------------------------------------------------------------- server side


# reply polling: quick while a reply is likely, then backing off to 0.1 s (a round of seconds costs ten small
# requests a second; at 0.5 s a reply that came just after a look waited up to half a second more)
POLL_FIRST_S, POLL_MAX_S = 0.02, 0.05  # one server's requests: 20 a second at most


def exchange(grid: Grid, messages: list[Message], timeout: float | None) -> list[Message]:
    """Push ``messages`` and pull their replies until all are in or ``timeout`` passes.

    Flower's ``Grid.send_and_receive`` polls a deployed SuperLink every 3 s, which on a short
    round adds up to 3 s per exchange; this polls after 20 ms and backs off to 0.05 s, so a reply
    is seen within 50 ms and a long round costs twenty small requests a second (one server's)."""
    waiting = set(grid.push_messages(messages))
    end = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    pause = POLL_FIRST_S
    while waiting:
        got = list(grid.pull_messages(waiting))
        replies += got
        waiting -= {m.metadata.reply_to_message_id for m in got}
        if not waiting or (end is not None and time.monotonic() >= end):
            break
        time.sleep(pause if end is None else max(0.0, min(pause, end - time.monotonic())))
        pause = min(pause * 1.5, POLL_MAX_S)
    return replies


def _send(grid: Grid, nodes: dict[str, int], cids: list[str], kind: str, rnd: int, payload: dict[str, Any],
          timeout: float | None) -> tuple[dict[str, RecordDict], dict[str, str]]:
    """Send one message per client and collect the replies: (content by client, failures by client).
    ``payload``: the records every client gets (serialised once), besides its own config."""
    out = []
    for cid in cids:
        content = RecordDict({**payload, "config": ConfigRecord({"cid": cid, "round": rnd})})
        out.append(Message(content, dst_node_id=nodes[cid], message_type=kind))
    replies = exchange(grid, out, timeout)
    # match a reply to its request by message id (sending fills in the ids)
    sent = {m.metadata.message_id: cid for m, cid in zip(out, cids)}
    ok: dict[str, RecordDict] = {}
    failed: dict[str, str] = {}
    for r in replies:
        cid = sent.get(r.metadata.reply_to_message_id)
        if cid is None:
            continue
        if r.has_error():
            failed[cid] = f"client error: {r.error.reason}"
        else:
            ok[cid] = r.content
    for cid in cids:
        if cid not in ok and cid not in failed:
            failed[cid] = f"no reply within {timeout}s (disconnected?)" if timeout else "no reply"
    return ok, failed


WARM_UP = "warm-up"  # a query's config key: build your side of the run now, the real query follows


class WarmUp(threading.Thread):
    """Ask each node to build its side of the run (model, data, features) as soon as it is connected,
    while the server builds its own: a node builds on its first message, and the server's first
    message (the query of :func:`discover`) otherwise comes only once the server has built. Nodes
    that connect during the server's build are asked as they appear (a server that starts in a
    blink, ``fedvl serve``'s own, is often up before its nodes). The replies are not awaited;
    :meth:`stop` before the rounds use the grid, which is then this thread's no more."""

    def __init__(self, grid: Grid, poll_s: float = 0.1):
        super().__init__(daemon=True, name="fedvl-warm-up")
        self.grid, self.poll_s, self.done, self.asked = grid, poll_s, threading.Event(), set()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                new = [n for n in self.grid.get_node_ids() if n not in self.asked]
                if new:
                    self.grid.push_messages([Message(RecordDict({"config": ConfigRecord({WARM_UP: 1})}), dst_node_id=n,
                                                     message_type="query") for n in new])
                    self.asked.update(new)
            except Exception:  # noqa: BLE001  (a head start only: the real query says what is wrong)
                return
            self.done.wait(self.poll_s)

    def stop(self) -> None:
        self.done.set()
        if self.is_alive():
            self.join()


def discover(grid: Grid, client_ids: list[str], wait_s: float, sizes: dict[str, int] | None = None,
             answer_s: float | None = None) -> dict[str, int]:
    """Map each client id to the node holding its partition (every node answers a ``query``);
    ``sizes`` receives each client's training-set size when the nodes report it (SecAgg+).
    ``wait_s`` bounds how long nodes may take to join; a node that joined in time has ``answer_s``
    (None: as long as it takes; Flower answers for a node that goes away) for its answer, which
    waits for its worker to warm up: a reply cut off at the join deadline would be lost, and with
    it the reason a node cannot serve the run."""
    deadline = time.monotonic() + wait_s
    nodes: dict[str, int] = {}
    refused: dict[int, str] = {}  # node -> its error (e.g. a partition the run does not have): asked once only
    joined: set[int] = set()
    while True:
        node_ids = [n for n in grid.get_node_ids() if n not in nodes.values() and n not in refused]
        joined.update(node_ids)
        if node_ids:
            msgs = [Message(RecordDict({"config": ConfigRecord({"cid": "?"})}), dst_node_id=n, message_type="query")
                    for n in node_ids]
            left = max(1.0, deadline - time.monotonic())
            replies = exchange(grid, msgs, None if answer_s is None else max(left, answer_s))
            node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in msgs}
            for r in replies:
                node = node_of.get(r.metadata.reply_to_message_id)
                if node is None:
                    continue
                if r.has_error():
                    refused[node] = " ".join(str(r.error.reason).split())[-300:]
                    print(f"fedvl serve: node {node} cannot serve this run: {refused[node]}", file=sys.stderr,
                          flush=True)
                    continue
                info = r.content["config"]
                nodes[str(info["cid"])] = node
                if sizes is not None and "num-train" in info:
                    sizes[str(info["cid"])] = int(info["num-train"])
        missing = [c for c in client_ids if c not in nodes]
        if not missing:
            return nodes
        if time.monotonic() > deadline:
            if not joined:
                raise FlowerRunError(f"no node joined within {wait_s:.0f}s (run.flower_wait_s): start one `fedvl join "
                                     f"--partition i` per client, i = 0..{len(client_ids) - 1}")
            bad = "".join(f"; node {n} refused: {why}" for n, why in refused.items())
            raise FlowerRunError(f"after {wait_s:.0f}s no node holds client(s) {', '.join(missing)}; "
                                 f"start one `fedvl join --partition i` per client{bad}")
        time.sleep(0.5)


class FlowerTransport:
    """The transport of the Flower runtimes: one message per client through Flower's grid,
    retried while fewer than ``run.min_clients`` answer; under ``run.secagg`` the train round
    runs through SecAgg+ and the server gets only the aggregate (:class:`SecureSum`)."""

    def __init__(self, grid: Grid, cfg: ExperimentConfig, codec, nodes: dict[str, int], sizes: dict[str, int]):
        self.grid, self.cfg, self.codec, self.nodes, self.sizes = grid, cfg, codec, nodes, sizes
        self.timeout = cfg.run.round_timeout_s or None

    def fit(self, rnd: int, cids: list[str], down: Any, progress) -> tuple[Any, dict[str, str]]:
        if self.cfg.run.secagg:
            return self._secure_train(cids, rnd, down)
        return self._plain_train(cids, rnd, down)

    def evaluate(self, rnd: int, cids: list[str], down: Any,
                 progress) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
        evals, failed = _send(self.grid, self.nodes, cids, "evaluate", rnd, self.codec.eval_down(down), self.timeout)
        return {cid: read_scores(evals[cid]) for cid in cids if cid in evals}, failed

    def _plain_train(self, sampled: list[str], rnd: int, down: Any) -> tuple[dict[str, Any], dict[str, str]]:
        """A train round in the clear: every reply reaches the server, to be validated and aggregated."""
        cfg, timeout = self.cfg, self.timeout
        payload = self.codec.down(down)
        for attempt in range(cfg.run.round_retries + 1):
            replies, failed = _send(self.grid, self.nodes, sampled, "train", rnd, payload, timeout)
            if len(replies) >= min(cfg.run.min_clients, len(sampled)):
                break
            if attempt == cfg.run.round_retries:
                raise FlowerRunError(
                    f"round {rnd}: {len(replies)} of {len(sampled)} clients answered, fewer than run.min_clients="
                    f"{cfg.run.min_clients} after {cfg.run.round_retries + 1} attempt(s): {failed}")
        results = {}
        for cid, content in list(replies.items()):
            try:
                results[cid] = self.codec.read_reply(content)
            except (KeyError, TypeError, ValueError) as e:  # a malformed reply never crashes the server
                failed[cid] = f"malformed reply: {type(e).__name__}: {e}"
        if not results:
            raise FlowerRunError(f"round {rnd}: no usable client reply: {failed}")
        return results, failed

    def _secure_train(self, sampled: list[str], rnd: int, global_params: Params) -> tuple[SecureSum, dict[str, str]]:
        """A train round under SecAgg+: the server gets the weighted mean and validates only that."""
        cfg, timeout = self.cfg, self.timeout
        need = min(cfg.run.min_clients, len(sampled))
        max_weight = max(self.sizes.get(cid, 1) for cid in sampled)
        for attempt in range(cfg.run.round_retries + 1):
            new, results = secagg.secure_train(self.grid, cfg, self.nodes, sampled, rnd, global_params, max_weight,
                                               timeout)
            failed = {cid: "dropped out of secure aggregation" for cid in sampled if cid not in results}
            if new is not None and len(results) >= need:
                break
            if attempt == cfg.run.round_retries:
                raise FlowerRunError(
                    f"round {rnd}: secure aggregation ended with {len(results)} of {len(sampled)} clients "
                    f"(run.min_clients={cfg.run.min_clients}; each client needs run.secagg_threshold live "
                    f"neighbours) after {cfg.run.round_retries + 1} attempt(s)")
        problem = secagg.check_aggregate(cfg, global_params, new)
        if problem:  # no single update can be blamed or left out: the run stops
            raise FlowerRunError(f"round {rnd}: the securely aggregated update is invalid ({problem}); a client sent "
                                 "a broken update, which SecAgg+ hides from the server")
        return SecureSum(new, secagg.round_record(cfg, rnd, sampled, results), results), failed


def run_rounds(grid: Grid, fed, history: History, progress=None, server=None, start: int = 1) -> dict[str, Any]:
    """Every round through Flower's grid (:func:`fedvl.rounds.loop.run_rounds`). ``server``: the
    round's server side (one that checkpoints, in a simulation, whose clients' state folder the
    server can see); by default the family's server side without a run folder (no checkpoints)."""
    cfg, family = fed.cfg, family_of(fed.cfg.algorithm.name)
    sizes: dict[str, int] = {}
    nodes = discover(grid, fed.client_ids, cfg.run.flower_wait_s, sizes, cfg.run.round_timeout_s or None)
    transport = FlowerTransport(grid, cfg, family.codec(), nodes, sizes)
    return loop_rounds(server or family.server(fed, None, None), transport, history, progress, start)


def make_server_app(fed, history: History, progress=None, outcome: dict | None = None, server=None,
                    start: int = 1) -> ServerApp:
    """A ServerApp running fedvl's server side (``server``, see :func:`run_rounds`) on an already built
    federation and results folder (the Flower simulation). A deployment's is :mod:`fedvl.deploy.server_app`."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            final = run_rounds(grid, fed, history, progress, server, start)
        except Exception as e:  # Flower only logs a ServerApp's exception: hand it to the caller
            if outcome is not None:
                outcome["error"] = e
            raise
        if outcome is not None:
            outcome["final"] = final

    return app


class InProcessBackend:
    """A Flower simulation backend that runs ClientApps in this process, one message at
    a time. Ray (Flower's default backend) needs seconds and spare cores to start; on
    a small CPU machine this keeps Flower's whole message path (grid, link state,
    node-to-partition mapping, ClientApp dispatch) without it."""

    def __init__(self, backend_config) -> None:
        import threading

        self.app_fn = None
        self._busy = threading.Lock()

    def build(self, app_fn) -> None:
        self.app_fn = app_fn

    @property
    def num_workers(self) -> int:
        return 1

    def is_worker_idle(self) -> bool:
        return not self._busy.locked()

    def terminate(self) -> None:
        pass

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        if message.has_content():
            # A real node gets its own deserialised copy of every message, but the in-memory
            # grid hands every node the same records; SecAgg+'s client mod edits its message's
            # config records in place, so each node gets its own copy of those.
            message.content = RecordDict({k: ConfigRecord(dict(v)) if isinstance(v, ConfigRecord) else v
                                          for k, v in message.content.items()})
        with self._busy:
            return self.app_fn()(message=message, context=context), context


def ray_backend_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """Ray's resources for a flower-sim run: each ClientApp worker reserves
    ``run.flower_cpus_per_client`` CPUs and ``run.flower_gpus_per_client`` of a GPU (0.25: four
    clients share one GPU, each in its own process, so their models and batches must fit
    together); Ray gets ``run.flower_workers`` workers' worth of CPUs and every GPU here. Ray
    hides the GPUs from a worker that reserves none, so such workers compute on the CPU."""

    r = cfg.run
    gpus = torch.cuda.device_count() if r.flower_gpus_per_client > 0 else 0
    if r.flower_gpus_per_client > 0 and not gpus:
        raise ConfigError("run.flower_gpus_per_client > 0 needs a CUDA device, and torch sees none here")
    if r.flower_gpus_per_client == 0 and r.device.startswith("cuda"):
        raise ConfigError(f"run.device={r.device} with the ray backend needs run.flower_gpus_per_client > 0 "
                          "(Ray shows a worker only the GPUs it reserved)")
    return {"client_resources": {"num_cpus": r.flower_cpus_per_client, "num_gpus": r.flower_gpus_per_client},
            "init_args": {"num_cpus": max(1, round(r.flower_workers * r.flower_cpus_per_client)), "num_gpus": gpus,
                          "include_dashboard": False, "log_to_driver": False}}


def flower_simulate(fed, run_dir: Path, history: History, progress=None, server=None,
                    start: int = 1) -> dict[str, Any]:
    """Run rounds ``start``.. through Flower's simulation engine (one virtual SuperNode per client)
    and return the last round's record. ``fed``: either exchange family's federation; ``server``: the
    round's server side (see :func:`run_rounds`)."""
    from flwr.simulation import run_simulation

    cfg = fed.cfg
    outcome: dict[str, Any] = {}
    server_app = make_server_app(fed, history, progress, outcome, server, start)
    state_root = str(run_dir / "client_states")
    backend_config: dict[str, Any] = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
    if cfg.run.flower_backend == "ray":
        backend_config = ray_backend_config(cfg)
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ConfigError("run.flower_backend=ray needs Ray: pip install 'flwr[simulation]' "
                              "(or use run.flower_backend=inprocess)")
        # Ray workers are separate processes: each builds the model and data once
        client = make_client_app(dump_config(cfg), state_root)
        run_simulation(server_app=server_app, client_app=client, num_supernodes=len(fed.client_ids),
                       backend_config=backend_config)
    else:
        import sys
        import types

        # Flower's engine builds its backend with `from .backend.raybackend import RayBackend`
        # (vce_api.backend_fn). Importing the real module needs Ray, which is not a
        # dependency, so a stand-in module holding our backend takes its place for this run.
        name = "flwr.server.superlink.fleet.vce.backend.raybackend"
        stand_in = types.ModuleType(name)
        stand_in.RayBackend = InProcessBackend  # type: ignore[attr-defined]
        client = make_client_app(state_root=state_root, fed=fed, progress=progress)
        original = sys.modules.get(name)
        sys.modules[name] = stand_in
        try:
            # any name but "ray" skips run_simulation's early exit when Ray is not installed;
            # the engine itself ignores the name (flwr 1.42 start_vce)
            run_simulation(server_app=server_app, client_app=client, num_supernodes=len(fed.client_ids),
                           backend_name="fedvl-inprocess", backend_config=backend_config)
        finally:
            if original is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = original
    if "error" in outcome:
        raise outcome["error"]
    if "final" not in outcome:
        raise FlowerRunError("the Flower simulation ended without finishing the run (see the log above)")
    return outcome["final"]
