"""FedMMKT's pure server functions and client losses, against values computed by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from fedvl.algorithms.fedmmkt import alignment_loss, ensemble, global_prototypes, kd_loss, quality_filter


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
