"""hf-vlm end to end: every fine-tuning algorithm, the CLI, Flower's simulation and resume."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import vlm_overrides

from fedvl.config import load_config
from fedvl.experiment import run_experiment
from fedvl.report.history import History
from fedvl.rounds.checkpoint import checkpoint_dirs
from fedvl.transport.inprocess import build_federation, simulate

ALGOS = ["fedavg", "fedprox", "local", "centralized", "feddat model.peft=adapter", "fedavg model.answer_mode=rank"]


def _cfg(ck, tmp_path, *extra):
    return load_config(None, vlm_overrides(ck, tmp_path, *extra))


@pytest.mark.parametrize("algo", ALGOS)
def test_every_algorithm_trains_a_generative_model(algo, vlm_checkpoint, tmp_path):
    cfg = _cfg(vlm_checkpoint("llava"), tmp_path, *f"algorithm.name={algo}".split())
    out = run_experiment(cfg, tmp_path / "run", progress_enabled=False)
    final = out["final"]
    assert set(final["avg"]) >= {"acc", "exact", "vqa_score", "loss", "gen_seconds"}
    for cid, m in final["eval"].items():
        assert m["n"] == 24 and 0.0 <= m["acc"] <= 1.0 and m["gen_seconds"] > 0
    rounds = History.read(tmp_path / "run")
    fits = [r["train"] for r in rounds if "train" in r]
    assert fits and all(m["steps"] > 0 for f in fits for m in f.values())
    if algo.startswith("feddat"):  # the distillation ran on the answer tokens: its diagnostics are there
        assert all("kd_shared" in m and "agree_shared_dat" in m for m in fits[-1].values())


def test_only_the_lora_factors_travel_and_bytes_are_counted(vlm_checkpoint, tmp_path):
    fed = build_federation(_cfg(vlm_checkpoint("qwen2_vl"), tmp_path, "model.lora_rank=4"), status=lambda s: None)
    assert fed.travel and all(".lora_A.shared." in n or ".lora_B.shared." in n for n in fed.travel)
    # 2 layers x (q_proj, v_proj) x (A: 4 x 32, B: out x 4), float32; Qwen's v_proj is out 16 (one kv head)
    expect = 2 * ((4 * 32 + 32 * 4) + (4 * 32 + 16 * 4)) * 4
    assert fed.param_report()["bytes_up_per_client_round"] == expect


def test_flower_simulation_gives_the_in_process_metrics(vlm_checkpoint, tmp_path):
    ck = vlm_checkpoint("idefics3")
    sim = run_experiment(_cfg(ck, tmp_path), tmp_path / "sim", progress_enabled=False)
    flw = run_experiment(_cfg(ck, tmp_path, "run.runtime=flower-sim"), tmp_path / "flw", progress_enabled=False)
    a = [r["eval"] for r in History.read(tmp_path / "sim") if "eval" in r]
    b = [r["eval"] for r in History.read(tmp_path / "flw") if "eval" in r]
    drop = {"gen_seconds"}  # wall time
    assert [{c: {k: v for k, v in m.items() if k not in drop} for c, m in e.items()} for e in a] == \
        [{c: {k: v for k, v in m.items() if k not in drop} for c, m in e.items()} for e in b]
    assert flw["final"]["avg"]["loss"] == sim["final"]["avg"]["loss"]


def test_resume_from_an_earlier_checkpoint_lands_on_the_same_numbers(vlm_checkpoint, tmp_path):
    cfg = _cfg(vlm_checkpoint("gemma3"), tmp_path, "algorithm.rounds=3", "algorithm.name=feddat", "model.peft=adapter")
    run = tmp_path / "run"
    run.mkdir()
    final = simulate(build_federation(cfg, status=lambda s: None), run, History(run))
    newest = checkpoint_dirs(run)[0]
    assert newest[0] == 3
    shutil.rmtree(newest[1])  # as if killed before round 3 was committed
    again = simulate(build_federation(cfg, status=lambda s: None), run, History(run), resume=True, warn=lambda s: None)
    strip = lambda ev: {c: {k: v for k, v in m.items() if k != "gen_seconds"} for c, m in ev.items()}  # noqa: E731
    assert strip(again["eval"]) == strip(final["eval"])
    assert [r["round"] for r in History.read(run)] == [1, 2, 3]


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "fedvl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_cli_runs_a_generative_model_and_refuses_bad_settings_in_one_line(vlm_checkpoint, tmp_path):
    ck = vlm_checkpoint("llava")
    ok = _cli("run", *vlm_overrides(ck, tmp_path, "run.name=vlm"), "--quiet", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads((tmp_path / "results" / "vlm" / "summary.json").read_text())
    assert summary["final"]["avg"]["vqa_score"] >= 0.0
    for bad, words in [("model.checkpoint=", "needs model.checkpoint"),
                       (f"model.checkpoint={tmp_path / 'nowhere'}", "neither a local directory"),
                       ("model.peft=prompt", "not available with model.name=hf-vlm"),
                       ("model.lora_targets=q_proj,fc9", "not a projection of a decoder layer"),
                       ("model.max_new_tokens=0", "model.max_new_tokens")]:
        r = _cli("run", *vlm_overrides(ck, tmp_path, bad), cwd=tmp_path)
        assert r.returncode == 2, (bad, r.stderr)
        assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)


def test_every_real_format_feeds_a_generative_model(vlm_checkpoint, real_root, tmp_path):
    cfg = _cfg(vlm_checkpoint("qwen2_5_vl"), tmp_path, "data.benchmark=real", f"data.root={real_root}",
               "data.clients=aqua,abstract,vizwiz,cocoqa,gqa,clove:attribute", "data.answer_vocab=3",
               "algorithm.rounds=1")
    fed = build_federation(cfg, status=lambda s: None)
    assert len(fed.train) == 6
    vizwiz = fed.test["c2-vizwiz"]
    assert len(vizwiz) == 8 and all(len(h) >= 1 for h in vizwiz.answers)  # the human answers are kept
    run = tmp_path / "run"
    run.mkdir()
    rec = simulate(fed, run, History(run))
    for m in rec["eval"].values():
        assert m["n"] == 8 and 0.0 <= m["vqa_score"] <= 1.0 and m["exact"] <= 1.0


def test_qlora_is_refused_on_the_cpu_in_one_line(vlm_checkpoint, tmp_path):
    from fedvl.schema import ConfigError

    with pytest.raises(ConfigError, match="needs a CUDA device"):
        _cfg(vlm_checkpoint("llava"), tmp_path, "model.quantize=4bit", "run.device=cpu")
    with pytest.raises(ConfigError, match="use model.peft=lora"):
        _cfg(vlm_checkpoint("llava"), tmp_path, "model.quantize=4bit", "model.peft=adapter")


@pytest.mark.cuda
def test_qlora_trains_lora_on_a_4bit_base(vlm_checkpoint, tmp_path):
    pytest.importorskip("bitsandbytes")
    cfg = _cfg(vlm_checkpoint("llava"), tmp_path, "model.quantize=4bit", "run.device=cuda",
               "model.lora_targets=q_proj,k_proj,v_proj,o_proj")
    fed = build_federation(cfg, status=lambda s: None)
    kinds = {type(m).__name__ for m in fed.model.language.modules()}
    assert "Linear4bit" in kinds  # the language model's projections are 4-bit
    assert all(".lora_" in n for n in fed.travel)
    run = tmp_path / "run"
    run.mkdir()
    rec = simulate(fed, run, History(run))
    assert all(m["n"] == 24 for m in rec["eval"].values())


def test_a_chat_template_that_hides_where_the_answer_starts_is_refused_in_one_line(vlm_checkpoint, tmp_path):
    ck = tmp_path / "odd"
    shutil.copytree(vlm_checkpoint("llava"), ck)
    template = (ck / "chat_template.jinja").read_text()
    # the generation prompt says "assistant\n" but a rendered assistant turn starts "assistant: "
    (ck / "chat_template.jinja").write_text(template.replace("<|im_start|>{{ m['role'] }}\n",
                                                             "<|im_start|>{{ m['role'] }}: "))
    r = _cli("run", *vlm_overrides(ck, tmp_path, "run.name=odd"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "cannot tell where the answer starts" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_generative_client_on_two_processes_matches_one(vlm_checkpoint, tmp_path):
    ck = vlm_checkpoint("llava")
    one = run_experiment(_cfg(ck, tmp_path, "algorithm.rounds=1"), tmp_path / "one", progress_enabled=False)
    two = run_experiment(_cfg(ck, tmp_path, "algorithm.rounds=1", "run.client_procs=2"), tmp_path / "two",
                         progress_enabled=False)
    for cid, m in one["final"]["eval"].items():  # the answer tokens' loss after one round of LoRA training
        assert two["final"]["eval"][cid]["loss"] == pytest.approx(m["loss"], rel=1e-4), cid
    train = [r["train"] for r in History.read(tmp_path / "two") if "train" in r][0]
    ref = [r["train"] for r in History.read(tmp_path / "one") if "train" in r][0]
    for cid in ref:
        assert train[cid]["train_loss"] == pytest.approx(ref[cid]["train_loss"], rel=1e-4)
