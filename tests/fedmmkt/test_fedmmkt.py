"""FedMMKT's pure server functions and client losses, against values computed by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from fedvl.fedmmkt.algorithms import alignment_loss, ensemble, global_prototypes, kd_loss, quality_filter


def _logits_from_probs(p):
    return torch.tensor(p).log()


def test_ensemble_plain_mean():
    a = _logits_from_probs([[0.8, 0.2], [0.4, 0.6]])
    b = _logits_from_probs([[0.6, 0.4], [0.2, 0.8]])
    out = ensemble({"a": a, "b": b}, confidence_weighting=False)
    assert torch.allclose(out, torch.tensor([[0.7, 0.3], [0.3, 0.7]]), atol=1e-6)


def test_ensemble_confidence_weighting_by_hand():
    # a predicts class 0 on both samples (top probs 0.9, 0.5): conf_a[0] = 0.7;
    # b predicts class 1 on both (0.6, 0.8): conf_b[1] = 0.7
    a = _logits_from_probs([[0.9, 0.1], [0.5, 0.5 - 1e-7]])
    b = _logits_from_probs([[0.4, 0.6], [0.2, 0.8]])
    out = ensemble({"a": a, "b": b})
    conf_a, conf_b = (0.9 + 0.5) / 2, (0.6 + 0.8) / 2  # 0.7 and 0.7
    assert conf_a == pytest.approx(conf_b)
    # equal confidences -> equal weights -> the plain mean
    assert torch.allclose(out, ensemble({"a": a, "b": b}, confidence_weighting=False), atol=1e-6)
    # now b is sure of class 1 (0.95, 0.99) and a hesitant on class 0 (0.55, 0.6)
    a = _logits_from_probs([[0.55, 0.45], [0.6, 0.4]])
    b = _logits_from_probs([[0.05, 0.95], [0.01, 0.99]])
    out = ensemble({"a": a, "b": b})
    wa, wb = (0.55 + 0.6) / 2, (0.95 + 0.99) / 2
    want0 = (wa * torch.tensor([0.55, 0.45]) + wb * torch.tensor([0.05, 0.95])) / (wa + wb)
    want1 = (wa * torch.tensor([0.6, 0.4]) + wb * torch.tensor([0.01, 0.99])) / (wa + wb)
    assert torch.allclose(out, torch.stack([want0, want1]), atol=1e-5)
    assert torch.allclose(out.sum(1), torch.ones(2))


def test_quality_filter_keeps_agreeing_confident_samples():
    probs = torch.tensor([[0.7, 0.3], [0.45, 0.55], [0.9, 0.1], [0.52, 0.48]])
    prompt = torch.tensor([0, 0, 1, 0])
    assert quality_filter(probs, prompt).tolist() == [True, False, False, True]
    assert quality_filter(probs, prompt, threshold=0.6).tolist() == [True, False, False, False]


def test_global_prototypes_weighted_by_counts():
    pa = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    pb = torch.tensor([[3.0, 2.0], [4.0, 4.0]])
    out = global_prototypes({"a": pa, "b": pb}, {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([3.0, 2.0])})
    assert torch.allclose(out, torch.tensor([[(1 + 9) / 4, 6 / 4], [4.0, 4.0]]))


def test_kd_loss_by_hand():
    student = torch.tensor([[1.0, 0.0, -1.0]])
    teacher_p = torch.tensor([[0.5, 0.3, 0.2]])
    t = 3.0
    tl = teacher_p.log() / t
    q = torch.exp(tl) / torch.exp(tl).sum()
    s = F.softmax(student / t, dim=1)
    want = t * t * float((q * (q.log() - s.log())).sum())
    assert float(kd_loss(student, teacher_p, t)) == pytest.approx(want, rel=1e-5)
    # the student that reproduces the tempered teacher has zero loss
    assert float(kd_loss(teacher_p.log(), teacher_p, t)) == pytest.approx(0.0, abs=1e-6)


def test_alignment_loss_prefers_matching_prompts_and_skips_unseen():
    protos = torch.eye(3)
    aligned = alignment_loss(torch.eye(3), protos, torch.tensor([True, True, True]), 0.1)
    shuffled = alignment_loss(torch.eye(3)[[1, 2, 0]], protos, torch.tensor([True, True, True]), 0.1)
    assert float(aligned) < 1e-3 < float(shuffled)
    # by hand: one class only seen -> a softmax over one entry -> zero loss
    assert float(alignment_loss(torch.randn(3, 3), protos, torch.tensor([False, True, False]), 0.1)) == 0.0
    # two seen classes, orthogonal embeddings matching their prototypes: log(1 + e^{-10})
    two = alignment_loss(torch.eye(3), protos, torch.tensor([True, True, False]), 0.1)
    assert float(two) == pytest.approx(math.log(1 + math.exp(-10)), rel=1e-3)  # float32 near 1


# ---------------------------------------------------------------- the client-side levers

from fedvl.fedmmkt.algorithms import (
    DistillSet,
    KTClient,
    curriculum_order,
    next_pool,
    pace,
    pool_by_arch,
    rank01,
    synthetic_bn,
    training_pool,
)
from fedvl.fedmmkt.options import FedMMKTConfig
from fedvl.fedmmkt.task_models import build_task_model


def _cnn(classes=3):
    return build_task_model("cnn", classes, 8, 8, seed=0)


def _bn_stats(model):
    return [(m.running_mean.clone(), m.running_var.clone()) for m in model.modules()
            if isinstance(m, torch.nn.BatchNorm2d)]


def test_synthetic_bn_modes_by_what_they_do_to_running_statistics():
    model = _cnn().train()
    x = torch.randn(6, 3, 8, 8) * 3 + 2
    before = _bn_stats(model)
    with synthetic_bn(model, "batch"):
        out_batch = model(x)[1]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(before, _bn_stats(model)))
    assert model.training and all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with synthetic_bn(model, "eval"):
        out_eval = model(x)[1]
    assert model.training
    assert all(torch.equal(a[0], b[0]) for a, b in zip(before, _bn_stats(model)))
    # batch mode normalises with the batch's own statistics: what train mode computes, minus the update
    with synthetic_bn(model, "train"):
        out_train = model(x)[1]
    assert torch.allclose(out_batch, out_train, atol=1e-5) and not torch.allclose(out_batch, out_eval, atol=1e-3)
    moved = _bn_stats(model)[0][0]
    assert not torch.equal(moved, before[0][0])  # train mode moved the running mean


def _pool(n=12, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 8, 8, generator=g)
    labels = torch.arange(n) % classes
    return images, labels


def test_private_bn_statistics_see_private_batches_only_under_batch_mode():
    """Hook every BN forward: when a synthetic batch (size 3) passes, the running statistics must not move;
    the private batches (size 6) move them."""
    cfg = FedMMKTConfig(prompt_weight=1.0, kd_weight=0.0, synthetic_bn="batch", synthetic_batch=3, batch_size=6,
                        local_epochs=2, proto_weight=0.0)
    model = _cnn()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    bn.register_forward_pre_hook(lambda m, i: seen.append((i[0].shape[0], m.running_mean.clone())))
    bn.register_forward_hook(lambda m, i, o: seen.append((i[0].shape[0], m.running_mean.clone())))
    priv, plab = _pool(6)
    syn, slab = _pool(12, seed=1)
    KTClient(cfg).train(model, priv, plab, DistillSet(syn * 4 + 3, None, slab, None), None,
                        torch.Generator().manual_seed(0))
    pairs = list(zip(seen[::2], seen[1::2]))
    syn_calls = [(a, b) for a, b in pairs if a[0] == 3]
    priv_calls = [(a, b) for a, b in pairs if a[0] == 6]
    assert len(syn_calls) == 2 and len(priv_calls) == 2
    assert all(torch.equal(a[1], b[1]) for a, b in syn_calls)
    assert all(not torch.equal(a[1], b[1]) for a, b in priv_calls)


def test_prompt_label_training_uses_prompt_labels_not_soft_labels():
    """Soft labels say class 0 for every synthetic sample, prompts say class 2: with prompt labels the model
    learns class 2 on them, with soft labels only class 0."""
    priv, plab = _pool(6)
    syn, _ = _pool(24, seed=1)
    prompts = torch.full((24,), 2)
    soft = torch.tensor([[0.98, 0.01, 0.01]]).repeat(24, 1)
    preds = {}
    for name, (pw, kw) in {"prompt": (1.0, 0.0), "soft": (0.0, 1.0)}.items():
        cfg = FedMMKTConfig(prompt_weight=pw, kd_weight=kw, synthetic_bn="batch", local_epochs=30, batch_size=6,
                            synthetic_batch=24, proto_weight=0.0, lr=5e-3)
        model = _cnn()
        KTClient(cfg).train(model, priv, plab, DistillSet(syn, soft, prompts, None), None,
                            torch.Generator().manual_seed(0))
        model.eval()
        with torch.no_grad():
            preds[name] = model(syn)[1].argmax(1)
    assert float((preds["prompt"] == 2).float().mean()) >= 0.9
    assert float((preds["soft"] == 0).float().mean()) >= 0.9


def test_soft_labels_only_draw_from_the_kept_samples():
    cfg = FedMMKTConfig(prompt_weight=0.0, kd_weight=1.0, local_epochs=1, batch_size=6, curriculum=True,
                        curriculum_start=1.0)
    priv, plab = _pool(6)
    syn, slab = _pool(10, seed=1)
    keep = torch.tensor([True, False] * 5)
    client = KTClient(cfg)
    client.train(_cnn(), priv, plab, DistillSet(syn, torch.full((10, 3), 1 / 3), slab, keep), None,
                 torch.Generator().manual_seed(0))
    assert sorted(client.last_open.tolist()) == [0, 2, 4, 6, 8]


def test_ramp_scales_the_synthetic_terms_by_round():
    """lr ~ 0 freezes the model, so the same batches give the same losses: train_loss(round 1 of a 4-round ramp)
    = private + syn / 4, at round 4 = private + syn."""
    priv, plab = _pool(6)
    syn, slab = _pool(12, seed=1)
    cfg = FedMMKTConfig(prompt_weight=1.0, kd_weight=0.0, synthetic_ramp=4, local_epochs=1, batch_size=6,
                        proto_weight=0.0, lr=1e-30)
    out = {}
    for rnd in (1, 4):
        out[rnd] = KTClient(cfg).train(_cnn(), priv, plab, DistillSet(syn, None, slab, None), None,
                                       torch.Generator().manual_seed(0), rnd=rnd)
    assert out[1]["synthetic_loss"] == pytest.approx(out[4]["synthetic_loss"], rel=1e-5)
    assert out[4]["train_loss"] - out[1]["train_loss"] == pytest.approx(0.75 * out[4]["synthetic_loss"], rel=1e-4)


def test_rank_pace_and_curriculum_order_by_hand():
    assert rank01(torch.tensor([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    static = torch.tensor([0.1, 0.9, 0.5, 0.3])   # ranks 0, 1, 2/3, 1/3
    adaptive = torch.tensor([4.0, 1.0, 2.0, 3.0])  # ranks 1, 0, 1/3, 2/3
    # w = 1: static only; w = 0: adaptive only; w = 0.5: scores 0.5, 0.5, 0.5, 0.5 -> stable index order
    assert curriculum_order(static, adaptive, 1.0).tolist() == [0, 3, 2, 1]
    assert curriculum_order(static, adaptive, 0.0).tolist() == [1, 2, 3, 0]
    assert curriculum_order(None, adaptive, 1.0).tolist() == [0, 1, 2, 3]  # no static known: all tie at 0
    assert curriculum_order(static, adaptive, 0.5).tolist() == [0, 1, 2, 3]
    assert pace(1, 0.5, 4) == 0.5 and pace(2, 0.5, 4) == pytest.approx(2 / 3) and pace(4, 0.5, 4) == 1.0
    assert pace(9, 0.5, 4) == 1.0 and pace(1, 0.25, 1) == 1.0


def test_curriculum_opens_the_samples_easiest_by_the_difficulty_it_computed():
    """Static weight 1: the open share at round 1 is exactly the samples with the lowest ensemble loss on their
    prompt class; static weight 0: the lowest current loss of the client's own model."""
    syn, slab = _pool(8, seed=1)
    p_prompt = torch.tensor([0.9, 0.2, 0.6, 0.1, 0.8, 0.3, 0.5, 0.4])
    soft = torch.full((8, 3), 0.0)
    soft[torch.arange(8), slab] = p_prompt
    soft[torch.arange(8), (slab + 1) % 3] = 1 - p_prompt
    pool = DistillSet(syn, soft, slab, None)
    model = _cnn()
    cfg = FedMMKTConfig(prompt_weight=1.0, curriculum=True, curriculum_start=0.5, curriculum_rounds=3,
                        curriculum_static=1.0)
    opened = KTClient(cfg)._curriculum(model, pool, torch.arange(8), rnd=1)
    assert sorted(opened.tolist()) == [0, 2, 4, 6]  # the four highest ensemble probabilities of the prompt class
    assert len(KTClient(cfg)._curriculum(model, pool, torch.arange(8), rnd=2)) == 6  # pace 0.75 of 8
    cfg = FedMMKTConfig(prompt_weight=1.0, curriculum=True, curriculum_start=0.25, curriculum_static=0.0)
    model.eval()
    with torch.no_grad():
        loss = F.cross_entropy(model(syn)[1], slab, reduction="none")
    model.train()
    opened = KTClient(cfg)._curriculum(model, pool, torch.arange(8), rnd=1)
    assert opened.tolist() == loss.argsort()[:2].tolist()


def test_next_pool_keeps_the_newest_sets_and_round_one_uses_prompt_labels():
    imgs = lambda v: torch.full((4, 1), float(v))
    lab, probs, keep = torch.arange(4), torch.full((4, 4), 0.25), torch.tensor([True, False, True, True])
    p = next_pool(None, imgs(1), lab, probs, keep, max_sets=2)
    p = next_pool(p, imgs(2), lab, probs, keep, max_sets=2)
    assert p.images.flatten().tolist() == [1.0] * 4 + [2.0] * 4 and p.keep.sum() == 6
    p = next_pool(p, imgs(3), lab, probs, keep, max_sets=2)
    assert p.images.flatten().tolist() == [2.0] * 4 + [3.0] * 4
    assert next_pool(p, imgs(4), lab, probs, keep, max_sets=1).images.flatten().tolist() == [4.0] * 4
    # round 1: no ensemble yet -> the fresh set with its prompt labels, only if prompt-label training is on
    first = training_pool(FedMMKTConfig(prompt_weight=1.0), None, imgs(5), lab)
    assert first.soft is None and torch.equal(first.labels, lab)
    assert training_pool(FedMMKTConfig(prompt_weight=0.0), None, imgs(5), lab) is None
    assert training_pool(FedMMKTConfig(prompt_weight=1.0), p, imgs(5), lab) is p


def test_pool_by_arch_pools_real_data_within_an_architecture():
    from fedvl.fedmmkt.data import ImageTextSet

    def s(v, n):
        return ImageTextSet(torch.full((n, 1), float(v)), torch.full((n,), v), [str(v)] * n)

    out = pool_by_arch({"a": s(1, 2), "b": s(2, 3), "c": s(3, 1)}, {"a": "cnn", "b": "mlp", "c": "cnn"})
    assert out["a"].labels.tolist() == [1, 1, 3] == out["c"].labels.tolist()
    assert out["b"].labels.tolist() == [2, 2, 2]


def test_feedback_select_keeps_the_surest_share_of_every_class():
    from fedvl.fedmmkt.algorithms import feedback_select

    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    p_prompt = torch.tensor([0.9, 0.5, 0.7, 0.95, 0.6, 0.8, 0.3, 0.99])
    probs = torch.stack([torch.where(labels == 0, p_prompt, 1 - p_prompt),
                         torch.where(labels == 1, p_prompt, 1 - p_prompt)], 1)
    keep = torch.tensor([True, True, True, False, True, True, True, True])  # sample 3 was filtered out
    out = feedback_select(probs, labels, keep, 0.5)
    # class 0: accepted 0, 1, 2 -> ceil(1.5) = 2 surest: 0 (0.9), 2 (0.7); class 1: 7 (0.99), 5 (0.8)
    assert out.nonzero().flatten().tolist() == [0, 2, 5, 7]
    assert torch.equal(feedback_select(probs, labels, keep, 1.0), keep)


def test_restyle_moves_pool_statistics_to_the_private_ones_and_keeps_colour_order():
    from fedvl.fedmmkt.algorithms import restyle

    g = torch.Generator().manual_seed(0)
    syn = torch.rand(10, 3, 4, 4, generator=g) * 0.4 + 0.3     # bright-ish, mean ~0.5
    priv = torch.rand(6, 3, 4, 4, generator=g) * 0.2 - 0.6     # dark, mean ~-0.5
    out = restyle(syn, priv)
    assert torch.allclose(out.mean((0, 2, 3)), priv.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(out.std((0, 2, 3)), priv.std((0, 2, 3)), atol=1e-5)
    # one affine map per channel: the order of pixel values within a channel is kept
    assert torch.equal(syn[:, 0].flatten().argsort(), out[:, 0].flatten().argsort())


def test_synthetic_factor_schedule_by_hand():
    from fedvl.fedmmkt.algorithms import synthetic_factor

    assert synthetic_factor(1, 8, 0, 1.0) == 1.0
    assert synthetic_factor(1, 8, 4, 1.0) == 0.25 and synthetic_factor(5, 8, 4, 1.0) == 1.0
    assert synthetic_factor(8, 8, 0, 0.2) == pytest.approx(0.2)
    assert synthetic_factor(4, 7, 0, 0.4) == pytest.approx(0.7)     # halfway from 1 to 0.4
    assert synthetic_factor(2, 7, 4, 0.4) == pytest.approx(0.5 * 0.9)


def test_client_trains_on_the_restyled_pool_when_asked():
    """The synthetic batches that reach the model have the private set's channel means (restyle on) or the pool's
    (off)."""
    priv, plab = _pool(6)
    priv = priv * 0.1 - 0.5
    syn, slab = _pool(12, seed=1)
    syn = syn * 0.1 + 0.4
    means = {}
    for on in (True, False):
        cfg = FedMMKTConfig(prompt_weight=1.0, kd_weight=0.0, synthetic_restyle=on, synthetic_batch=12, batch_size=6,
                            local_epochs=1, proto_weight=0.0, synthetic_bn="batch")
        model = _cnn()
        seen = []
        model.body.register_forward_pre_hook(lambda m, i, seen=seen: seen.append(i[0].clone()))
        KTClient(cfg).train(model, priv, plab, DistillSet(syn, None, slab, None), None, torch.Generator().manual_seed(0))
        means[on] = float(next(x for x in seen if x.shape[0] == 12).mean())
    assert means[True] == pytest.approx(float(priv.mean()), abs=0.02)
    assert means[False] == pytest.approx(float(syn.mean()), abs=0.02)
