"""A run with a server optimizer resumes bit-exactly: its moments travel in the round checkpoint."""

import shutil

import torch

from fedvl.report.history import History
from fedvl.rounds.checkpoint import checkpoint_dirs, latest_checkpoint
from fedvl.transport.inprocess import build_federation, simulate

FEDADAM = ["algorithm.name=fedavg", "algorithm.rounds=3", "algorithm.server_opt=fedadam", "algorithm.server_lr=0.01"]


def test_fedadam_resume_is_bit_exact(tiny_cfg, tmp_path):
    fed = build_federation(tiny_cfg(*FEDADAM), status=lambda s: None)
    run = tmp_path / "run"
    run.mkdir()
    final = simulate(fed, run, History(run))
    ckpt = latest_checkpoint(run, fed.travel, lambda m: None)
    assert set(ckpt.server_tensors) == {f"{p}.{n}" for p in "mv" for n in fed.travel}
    assert any(t.abs().sum() > 0 for t in ckpt.server_tensors.values())
    # the server step moved the model: a plain FedAvg run of the same clients ends elsewhere
    plain_run = tmp_path / "plain"
    plain_run.mkdir()
    plain = simulate(build_federation(tiny_cfg(*FEDADAM[:2], "algorithm.rounds=3"), status=lambda s: None),
                     plain_run, History(plain_run))
    assert plain["eval"] != final["eval"]
    # killed after round 2's commit: round 3 runs again from round 2's checkpoint, moments included
    shutil.rmtree(checkpoint_dirs(run)[0][1])
    warnings = []
    again = simulate(build_federation(fed.cfg, status=lambda s: None), run, History(run), resume=True,
                     warn=warnings.append)
    assert "resuming from round 2 of 3" in warnings[-1] and len(warnings) == 1
    assert again["eval"] == final["eval"]  # bit-identical scores for every client
    resumed = latest_checkpoint(run, fed.travel, lambda m: None)
    assert all(torch.equal(resumed.server_tensors[k], t) for k, t in ckpt.server_tensors.items())
    assert all(torch.equal(resumed.global_params[k], t) for k, t in ckpt.global_params.items())
