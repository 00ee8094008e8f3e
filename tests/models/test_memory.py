"""model.gradient_checkpointing: the same numbers, fewer activations kept for backward."""

import math
import pytest
import torch
import torch.nn.functional as F

from fedvl.models.backbones import build_model
from fedvl.models.params import set_trainable, trainable_names
from fedvl.schema import ModelConfig


def saved_bytes_and_grads(model, batch):
    """Bytes autograd keeps for backward during one forward, and the trainable gradients after it."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    model.train()
    torch.manual_seed(0)  # the same dropout masks in both models
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(*batch), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return sum(saved), loss.item(), grads


def _pair(make):
    """The same model (same seed) without and with checkpointing, adapters trainable."""
    out = []
    for ckpt in (False, True):
        model = make(ckpt)
        set_trainable(model, trainable_names(model, "adapter"))
        out.append(model)
    return out


def check_same_numbers_less_memory(plain, ckpt, batch):
    b0, l0, g0 = saved_bytes_and_grads(plain, batch)
    b1, l1, g1 = saved_bytes_and_grads(ckpt, batch)
    assert l1 == pytest.approx(l0, abs=1e-6)
    assert set(g0) == set(g1) and any(".adapters." in n for n in g1)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-6)
    assert b1 < 0.8 * b0, (b0, b1)  # each layer keeps only its input
    return b0, b1


def test_default_model_encoder_checkpoints_with_same_gradients():
    def make(ckpt):
        cfg = ModelConfig(name="tiny", gradient_checkpointing=ckpt)
        return build_model(cfg, num_answers=5, image_size=64, seed=0)

    plain, ckpt = _pair(make)
    assert all(layer.gradient_checkpointing for layer in ckpt.text.encoder.layer)
    assert not any(layer.gradient_checkpointing for layer in plain.text.encoder.layer)
    images = torch.randint(0, 255, (4, 64, 64, 3), dtype=torch.uint8)
    feats = plain.image_features(images)
    torch.testing.assert_close(ckpt.image_features(images), feats)  # the frozen tower is untouched
    ids = torch.tensor([[101, 2054, 3609, 2003, 102]] * 4)
    check_same_numbers_less_memory(plain, ckpt, (ids, torch.ones_like(ids), feats))


def test_feddat_run_with_checkpointing_matches_and_uses_the_feature_cache(tiny_cfg, tmp_path):
    from fedvl.experiment import run_experiment

    finals = {}
    for ckpt in ("false", "true"):
        cfg = tiny_cfg("algorithm.name=feddat", f"model.gradient_checkpointing={ckpt}", "algorithm.rounds=1",
                       f"run.name={ckpt}")
        finals[ckpt] = run_experiment(cfg, tmp_path / ckpt, progress_enabled=False)["final"]
    # the second run found every client's vision features in the cache the first one wrote
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 8  # 4 clients x (train, test)
    assert finals["true"]["train_loss"] == pytest.approx(finals["false"]["train_loss"], rel=1e-5)
    assert finals["true"]["avg"]["acc"] == pytest.approx(finals["false"]["avg"]["acc"], abs=1e-6)


def test_feddat_shared_encoder_pass_with_checkpointing_matches_without(tiny_cfg, tmp_path, tiny_vl_base):
    """FedDAT's shared encoder pass (frozen connector) backpropagates the A_C loss through an encoder
    forward taken before the A_S step; with checkpointing that forward is recomputed in the backward
    pass, under the adapter mix of that moment. Same parameters after a round as without checkpointing."""
    from fedvl.models.params import get_params
    from fedvl.transport.inprocess import build_federation, run_round
    from fedvl.rounds.state import ClientStateStore

    after = {}
    for ckpt in (False, True):
        # on a VL base (connector frozen) FedDAT's shared encoder pass applies
        fed = build_federation(tiny_cfg("algorithm.name=feddat", "algorithm.rounds=1", "model.base=vl",
                                        f"model.base_weights={tiny_vl_base}",
                                        f"model.gradient_checkpointing={str(ckpt).lower()}"), status=lambda s: None)
        calls = []
        encode = fed.model.encode
        fed.model.encode = lambda *a, **k: calls.append(1) or encode(*a, **k)
        new, rec = run_round(fed, ClientStateStore(tmp_path / f"s{ckpt}"), 1, get_params(fed.model, fed.travel))
        after[ckpt] = (new, rec["train_loss"], ClientStateStore(tmp_path / f"s{ckpt}").load(fed.client_ids[0]))
        # the shared pass ran: 2 encoder forwards per batch (4 clients x 36 questions in batches of 8),
        # then FedDAT's 3 scores per client (the three-pass step would make 3 per batch)
        assert len(calls) == 2 * 4 * math.ceil(12 * 3 / 8) + 4 * 3
    (a, la, sa), (b, lb, sb) = after[False], after[True]
    assert lb == pytest.approx(la, rel=1e-6)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    for k in sa:  # A_C, trained through the recomputed encoder forward
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-5, atol=1e-6)
