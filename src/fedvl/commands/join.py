"""``fedvl join``: a Flower deployment's client node (a SuperNode running the fedvl ClientApp)."""

from __future__ import annotations

import argparse

from fedvl.deploy.names import EXECUTORS

JOIN_HELP = """\
Join a Flower deployment started by `fedvl serve` as the client holding
partition --partition (0..N-1 in the experiment's client order): starts a Flower
SuperNode running the fedvl ClientApp. Client-local state (e.g. FedDAT's A_C)
(or a FedMMKT client's task model) stays in --state-dir and never leaves this machine. Runs until the run ends: once
the SuperLink has been gone for --wait-s seconds it says so and exits 0 (or Ctrl-C).
Gives up (exit 1) when no Flower SuperLink answers at --server for --wait-s seconds at the
start (an open port is not enough), and at once when it answers only over the other security
(TLS vs --insecure); stops (exit 2) when the run has no partition --partition. If the server restarts
(`fedvl serve --resume`) within --wait-s, the node joins it again and its clients go on
from their state as of the server's last checkpoint. A warm process keeps this node's
model and data in memory between messages: by default fedvl's executor, which claims
the SuperNode's ClientApp tasks itself (no process per message); --executor flower
keeps Flower's own flwr-clientapp process per message, which hands it on. A warm
process that dies is started again (3 times at most); a message it was running is
reported failed at once, so the server can retry the round (run.round_retries).
"""


def add_parser(sub) -> None:
    jn = sub.add_parser("join", help="Flower deployment: run a client node for one partition",
                        description=JOIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    jn.add_argument("--server", required=True, help="the SuperLink, HOST:PORT")
    jn.add_argument("--partition", type=int, required=True, help="which client this node is (0..N-1)")
    jn.add_argument("--state-dir", default=None, help="client-local state folder (default: ~/.cache/fedvl/node-<i>)")
    jn.add_argument("--root-certificates", help="TLS: the CA certificate that signed the SuperLink's (PEM)")
    jn.add_argument("--insecure", action="store_true", help="no TLS (only if the server was started with --insecure)")
    jn.add_argument("--port", type=int, default=None, help="local port of this node's ClientApp API (default: free)")
    jn.add_argument("--wait-s", type=float, default=300.0,
                    help="keep retrying this long while the SuperLink is unreachable or refuses this node; once "
                         "it has been gone this long after the node joined, the run has ended (default: 300)")
    jn.add_argument("--device", default="",
                    help="where this node's client computes: cpu, cuda, cuda:N, or GPUs in a row that train each "
                         "client together, data parallel (cuda:0,1: run.client_procs=2; default: the run's run.device)")
    jn.add_argument("--auth-key", metavar="KEY",
                    help="node authentication: this node's private key (OpenSSH EC), whose .pub the server lists")
    jn.add_argument("--poll-s", type=float, default=0.2,
                    help="how often an idle node asks the SuperLink for its next message (Flower's own SuperNode "
                         "waits 3 s, most of a short round); raise it for many nodes on one SuperLink (default: 0.2)")
    jn.add_argument("--executor", choices=EXECUTORS, default="warm",
                    help="who runs this node's ClientApp: fedvl's long-lived executor (warm, the default) or a "
                         "Flower flwr-clientapp process per message that asks the warm worker (flower)")
    jn.set_defaults(handler=main)


def main(ns) -> int:
    from pathlib import Path

    from fedvl.deploy.join import join
    from fedvl.schema import ConfigError

    if not ns.root_certificates and not ns.insecure:
        raise ConfigError("give --root-certificates CA.pem (TLS) or --insecure")
    state = Path(ns.state_dir) if ns.state_dir else Path.home() / ".cache" / "fedvl" / f"node-{ns.partition}"
    return join(ns.server, ns.partition, state, Path(ns.root_certificates) if ns.root_certificates else None, ns.port,
                Path(ns.auth_key) if ns.auth_key else None, ns.wait_s, ns.device, ns.poll_s, ns.executor)
