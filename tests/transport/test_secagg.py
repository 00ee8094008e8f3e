"""SecAgg+ on the Flower runtime: the same numbers as in the clear (within the quantisation
step), the server never holds one client's update, and configurations it cannot serve are refused."""

import pytest

from fedvl.experiment import run_experiment
from fedvl.report.history import History
from fedvl.schema import ConfigError

SIM = ["run.runtime=flower-sim"]


@pytest.mark.parametrize("extra, match", [
    (["run.runtime=simulator"], "needs a Flower runtime"),
    (["algorithm.aggregator=median"], "needs algorithm.aggregator=mean"),
    (["algorithm.aggregator=krum", "algorithm.krum_byzantine=0"], "needs algorithm.aggregator=mean"),
    (["algorithm.clip_to_median=true"], "needs algorithm.aggregator=mean"),
    (["privacy.enabled=true", "algorithm.aggregation=uniform"], "needs algorithm.aggregator=mean"),
    (["algorithm.name=local"], "server step is a weighted mean"),
    (["run.transport_dtype=float16"], "transport_dtype=float32"),
    (["run.secagg_threshold=5"], "secagg_threshold must be in 2..4"),
    (["run.secagg_threshold=1"], "secagg_threshold must be in 2..4"),
    (["run.secagg_shares=5"], "secagg_shares must be 0"),
    (["data.num_clients=5", "data.domains=photo,sketch,night,painting,cartoon", "run.secagg_shares=4"],
     "secagg_shares must be 0"),
    (["algorithm.fraction_fit=0.25"], "at least 2 clients per round"),
    (["run.secagg_clip=0"], "secagg_clip must be > 0"),
])
def test_configurations_secagg_cannot_serve_are_refused(extra, match, tiny_cfg):
    with pytest.raises(ConfigError, match=match):
        tiny_cfg("run.secagg=true", *SIM, *extra)


def test_valid_secagg_configurations_pass(tiny_cfg):
    cfg = tiny_cfg("run.secagg=true", *SIM, "algorithm.name=feddat", "run.secagg_threshold=4")
    assert cfg.run.secagg and cfg.run.secagg_threshold == 4
    tiny_cfg("run.secagg=true", *SIM, "data.num_clients=5", "data.domains=photo,sketch,night,painting,cartoon",
             "run.secagg_shares=3", "run.secagg_threshold=2")


def test_cli_refusal_is_one_line_exit_2(tiny_overrides, capsys):
    from fedvl.cli import main

    assert main(["run", *tiny_overrides, "run.secagg=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedvl: error: run.secagg needs a Flower runtime") and "\n" not in err
    assert main(["run", *tiny_overrides, "run.runtime=flower-deploy"]) == 2
    assert "fedvl serve" in capsys.readouterr().err


def test_flower_size_arguments_are_exact():
    """Flower reads ints as counts and floats as shares, and refuses some counts: the mapping
    must give the workflow exactly the configured graph."""
    from fedvl.transport.secagg import _workflow_sizes

    assert _workflow_sizes(4, 3, 4) == (1.0, 3)  # every client: share 1.0 of 4 -> 4
    assert _workflow_sizes(2, 2, 2) == (1.0, 1.0)  # Flower refuses the count 2
    assert _workflow_sizes(3, 3, 5) == (3, 1.0)  # threshold == shares: Flower refuses the count
    assert _workflow_sizes(5, 3, 7) == (5, 3)


@pytest.mark.slow
def test_secagg_gives_the_plain_runs_numbers_and_the_server_only_the_sum(tiny_cfg, tmp_path, monkeypatch):
    """Quantity-skewed clients (different sample counts), so the weighted mean is what is checked."""
    from fedvl.algorithms.base import ServerRule
    from fedvl.finetune import exchange as parameters
    from fedvl.transport import secagg

    common = [*SIM, "data.partition=quantity", "data.num_clients=3"]
    plain_globals, secure_globals, deltas, replies, handed, start = [], [], [], [], [], {}
    real_aggregate = parameters.server_aggregate  # what the server side of every runtime calls

    def spy_plain(fed, rnd, g, results):
        new, record = real_aggregate(fed, rnd, g, results)
        plain_globals.append(new)
        return new, record

    monkeypatch.setattr(parameters, "server_aggregate", spy_plain)
    plain = run_experiment(tiny_cfg(*common), tmp_path / "plain", progress_enabled=False)

    # under SecAgg no strategy ever gets client updates, and what the server receives is recorded
    def never(*a, **k):
        raise AssertionError("the strategy received individual client updates")

    monkeypatch.setattr(ServerRule, "aggregate", never)
    monkeypatch.setattr(parameters, "server_aggregate", never)
    real_reply, real_train = secagg.masked_reply, secagg.secure_train

    def spy_reply(msg, cfg, cid, rnd, g, params, n, metrics):  # client side: the plaintext it masks
        deltas.append((rnd, n, {k: params[k].double() - g[k].double() for k in g}))
        if rnd == 1:
            start.update(g)
        return real_reply(msg, cfg, cid, rnd, g, params, n, metrics)

    def spy_train(grid, *a, **k):
        real_send = grid.send_and_receive

        def send(messages, *args, **kwargs):
            out = list(real_send(messages, *args, **kwargs))
            replies.extend(r.content for r in out if not r.has_error())
            return out

        monkeypatch.setattr(grid, "send_and_receive", send)  # for this round only
        try:
            return spy_round(grid, *a, **k)
        finally:
            monkeypatch.setattr(grid, "send_and_receive", real_send)

    def spy_round(grid, *a, **k):
        new, results = real_train(grid, *a, **k)
        secure_globals.append(new)
        return new, results

    real_fit = secagg._Round.aggregate_fit

    def spy_fit(self, rnd, results, failures):
        handed.append([res.parameters for _, res in results])
        return real_fit(self, rnd, results, failures)

    monkeypatch.setattr(secagg, "masked_reply", spy_reply)
    monkeypatch.setattr(secagg, "secure_train", spy_train)
    monkeypatch.setattr(secagg._Round, "aggregate_fit", spy_fit)
    secure = run_experiment(tiny_cfg(*common, "run.secagg=true"), tmp_path / "secure", progress_enabled=False)

    # the same run, within the quantisation step: metrics and global parameters
    assert secure["final"]["avg"]["acc"] == pytest.approx(plain["final"]["avg"]["acc"], abs=0.02)
    assert secure["final"]["avg"]["loss"] == pytest.approx(plain["final"]["avg"]["loss"], abs=1e-3)
    assert len(secure_globals) == len(plain_globals) == 2
    # round 1 differs only by SecAgg's quantisation; after that, clients start from slightly different
    # globals and Adam (which normalises steps) carries the difference on, so the bound is looser
    for (a, b), bound in zip(zip(plain_globals, secure_globals), (1e-5, 2e-2)):
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < bound
    hist = History.read(tmp_path / "secure")
    assert [r["secagg"]["clients"] for r in hist] == [3, 3] and all(r["secagg"]["clipped"] == 0 for r in hist)
    # the clients' sample counts differ, and the aggregate is their weighted mean delta
    r1 = [(n, d) for rnd, n, d in deltas if rnd == 1]
    assert len(r1) == 3 and len({n for n, _ in r1}) > 1
    total = sum(n for n, _ in r1)
    for k, g in start.items():
        mean = sum(n * d[k] for n, d in r1) / total
        assert float((secure_globals[0][k].double() - g.double() - mean).abs().max()) < 1e-5, k
    # nothing the server received holds a tensor: train replies carry masked integers in config
    # records, and the legacy strategy hook got one and the same aggregate for every client
    assert replies and all(len(arr) == 0 for c in replies for arr in c.array_records.values())
    masked = [c for c in replies if "secaggplus_configs" in c.config_records
              and "masked_params" in c.config_records["secaggplus_configs"]]
    assert len(masked) == 6  # 3 clients x 2 rounds
    assert all(len({id(p) for p in params}) == 1 for params in handed) and len(handed) == 2


@pytest.mark.slow
def test_a_client_failing_mid_protocol_is_dropped_and_its_masks_removed(tiny_cfg, tmp_path, monkeypatch):
    """A client that fails after the key exchange leaves pairwise masks in the others' vectors;
    its neighbours' shares rebuild them, and the round completes with the others."""
    from fedvl.transport import flower
    from fedvl.transport.inprocess import client_fit

    def flaky(fed, store, cid, rnd, params, on_step=None):
        if cid.startswith("c1"):
            raise ConnectionError("node went away")
        return client_fit(fed, store, cid, rnd, params, on_step)

    monkeypatch.setattr(flower, "client_fit", flaky)
    out = run_experiment(tiny_cfg(*SIM, "run.secagg=true"), tmp_path / "drop", progress_enabled=False)
    hist = History.read(tmp_path / "drop")
    assert all(sorted(r["train"]) == ["c0-photo", "c2-night", "c3-painting"] for r in hist)
    assert all("c1-sketch" in r["dropped"] and r["secagg"]["clients"] == 3 for r in hist)
    assert 0.0 <= out["final"]["avg"]["acc"] <= 1.0
    # with 4 shares and threshold 4, no dropout can be tolerated: the run stops in one line
    with pytest.raises(flower.FlowerRunError, match="secure aggregation ended with 0 of 4 clients"):
        run_experiment(tiny_cfg(*SIM, "run.secagg=true", "run.secagg_threshold=4", "algorithm.rounds=1"),
                       tmp_path / "stop", progress_enabled=False)
