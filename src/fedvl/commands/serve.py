"""``fedvl serve``: a Flower deployment's server side (SuperLink + the fedvl ServerApp)."""

from __future__ import annotations

import argparse

from fedvl.commands import split_args
from fedvl.commands.run import resumable
from fedvl.deploy.names import EXECUTORS

SERVE_HELP = """\
Run an experiment on a real Flower deployment. Starts a Flower SuperLink on
--host:--port, submits the experiment (the fedvl ServerApp, which this process
then runs itself), waits until it ends and stops the SuperLink. Start one
`fedvl join` per client, on the client machines (or here), with --partition
0..N-1. The results folder is the same as `fedvl run` writes.

  fedvl serve configs/task-feddat.yaml --port 9092 \\
      --ssl-certfile server.pem --ssl-keyfile server.key --ssl-ca-certfile ca.pem
  fedvl join --server SERVER:9092 --partition 0 --root-certificates ca.pem      # on client 0

Without certificates pass --insecure on both sides (no encryption: for trusted networks only).
With TLS, --auth-keys DIR admits only the nodes whose public key (DIR/*.pub, e.g. from
`ssh-keygen -t ecdsa -b 384 -N '' -f node0`) is listed; they join with --auth-key node0.
run.secagg=true aggregates with Flower's SecAgg+: the server sees only the sum of the updates.
Every algorithm deploys but the pooled references (centralized, kt-centralized); for the FedMMKT
family (`fedvl serve configs/fedmmkt.yaml`) the server alone holds the text-to-image model, and
partition i is the i-th of fedmmkt.domains / fedmmkt.archs.
The server commits a checkpoint every round; if it dies, `fedvl serve --resume results/NAME`
(same port and TLS options) continues from the last complete round with the nodes still
running (or restarted with the same --state-dir).
"""


def add_parser(sub) -> None:
    srv = sub.add_parser("serve", help="Flower deployment: start a SuperLink and run the experiment on it",
                         description=SERVE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    srv.add_argument("args", nargs="*", metavar="CONFIG|key=value")
    srv.add_argument("--host", default="0.0.0.0", help="address the SuperLink listens on (default: all)")
    srv.add_argument("--port", type=int, default=9092, help="SuperLink port for nodes and the run (default: 9092)")
    srv.add_argument("--ssl-certfile", help="TLS: the SuperLink's certificate (PEM)")
    srv.add_argument("--ssl-keyfile", help="TLS: the SuperLink's private key (PEM)")
    srv.add_argument("--ssl-ca-certfile", help="TLS: the CA certificate that signed it (PEM)")
    srv.add_argument("--insecure", action="store_true", help="no TLS (required when no certificates are given)")
    srv.add_argument("--overwrite", action="store_true", help="replace an existing results folder of the same name")
    srv.add_argument("--auth-keys", metavar="DIR",
                     help="node authentication (needs TLS): only nodes whose public key (*.pub, OpenSSH EC) is in DIR "
                          "may join")
    srv.add_argument("--resume", metavar="RESULTS_DIR",
                     help="continue a deployed run whose server stopped, from its last complete round, with the "
                          "folder's config.yaml; the nodes (still running, or restarted with the same --state-dir) "
                          "keep their clients' state")
    srv.add_argument("--executor", choices=EXECUTORS, default="warm",
                     help="who runs the ServerApp: this process, with the config and code already loaded (warm, the "
                          "default), or Flower's flwr-serverapp process per run, its output streamed through the "
                          "SuperLink (flower)")
    srv.set_defaults(handler=main)


def main(ns) -> int:
    from pathlib import Path

    from fedvl.deploy.serve import TLS, serve, start_superlink
    from fedvl.schema import ConfigError

    path, overrides = split_args(ns.args)
    if ns.resume and (path or overrides or ns.overwrite):
        raise ConfigError("serve --resume takes only the results folder: its config.yaml decides the run")
    if ns.resume and not resumable(Path(ns.resume)):
        return 0
    certs = [ns.ssl_certfile, ns.ssl_keyfile, ns.ssl_ca_certfile]
    if any(certs) and not all(certs):
        raise ConfigError("TLS needs all three of --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile")
    if not any(certs) and not ns.insecure:
        raise ConfigError("give TLS certificates (--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile) or --insecure")
    tls = TLS(Path(certs[0]), Path(certs[1]), Path(certs[2])).check() if all(certs) else None
    auth_keys = Path(ns.auth_keys) if ns.auth_keys else None
    # the SuperLink starts now: it listens while the config is loaded and checked (imports torch)
    link = start_superlink(ns.host, ns.port, tls, auth_keys, ns.executor)
    try:
        from fedvl.config import load_config
        from fedvl.experiment import run_dir_for

        if ns.resume:
            run_dir = Path(ns.resume)
            cfg = load_config(run_dir / "config.yaml", [])
        else:
            cfg = load_config(path, overrides + ["run.runtime=flower-deploy"])  # what this run is, in config.yaml
            run_dir = run_dir_for(cfg, overwrite=ns.overwrite)
    except BaseException:
        link.stop(discard=True)
        raise
    code = serve(cfg, run_dir, ns.host, ns.port, tls, auth_keys=auth_keys, resume=bool(ns.resume), link=link)
    print(f"results: {run_dir}")
    return code

