"""Symmetric InfoNCE: hand-computed values, symmetry, local/global equivalence, clamping."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clapkit.lightning_modules.losses import contrastive_loss, gather_with_grad, world_info


def test_identity_pairs_match_closed_form():
    a = torch.eye(2)
    out = contrastive_loss(a, a.clone(), 2.0)
    # each row: logits (2, 0) with target 0 -> log(1 + e^-2); both directions equal
    expected = math.log(1 + math.exp(-2.0))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.loss_a2b.item() == pytest.approx(expected, rel=1e-6)
    assert out.loss_b2a.item() == pytest.approx(expected, rel=1e-6)


def test_asymmetric_pairs_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    s = 3.0
    # logits a->b = s * a @ b.T = s * [[0.6, 0.0], [0.8, 1.0]]
    row0 = -(0.6 * s) + math.log(math.exp(0.6 * s) + math.exp(0.0))
    row1 = -(1.0 * s) + math.log(math.exp(0.8 * s) + math.exp(1.0 * s))
    # logits b->a are the transpose: [[0.6, 0.8], [0.0, 1.0]] * s
    col0 = -(0.6 * s) + math.log(math.exp(0.6 * s) + math.exp(0.8 * s))
    col1 = -(1.0 * s) + math.log(math.exp(0.0) + math.exp(1.0 * s))
    out = contrastive_loss(a, b, torch.tensor(s))
    assert out.loss_a2b.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert out.loss_b2a.item() == pytest.approx((col0 + col1) / 2, rel=1e-6)
    assert out.loss.item() == pytest.approx((row0 + row1 + col0 + col1) / 4, rel=1e-6)


def test_symmetric_in_its_arguments_and_matches_reference_formula():
    a = F.normalize(torch.randn(7, 5), dim=-1)
    b = F.normalize(torch.randn(7, 5), dim=-1)
    scale = torch.tensor(1 / 0.07)
    forward, backward = contrastive_loss(a, b, scale), contrastive_loss(b, a, scale)
    assert forward.loss.item() == pytest.approx(backward.loss.item(), rel=1e-6)
    logits = scale * a @ b.T
    target = torch.arange(7)
    reference = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert forward.loss.item() == pytest.approx(reference.item(), rel=1e-6)


def test_local_loss_is_global_loss_in_one_process():
    a = F.normalize(torch.randn(6, 4), dim=-1)
    b = F.normalize(torch.randn(6, 4), dim=-1)
    assert contrastive_loss(a, b, 10.0, local_loss=True).loss.item() == pytest.approx(
        contrastive_loss(a, b, 10.0).loss.item(), rel=1e-6
    )


def test_loss_runs_in_fp32_under_bf16_inputs_and_backpropagates_to_the_scale():
    a = F.normalize(torch.randn(4, 8), dim=-1).bfloat16().requires_grad_()
    b = F.normalize(torch.randn(4, 8), dim=-1).bfloat16()
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    out = contrastive_loss(a, b, log_scale.exp())
    assert out.loss.dtype == torch.float32
    out.loss.backward()
    assert a.grad is not None and log_scale.grad is not None and torch.isfinite(log_scale.grad)


def test_mismatched_batch_sizes_raise():
    with pytest.raises(ValueError, match="batch size"):
        contrastive_loss(torch.randn(3, 2), torch.randn(4, 2), 1.0)


def test_without_process_group_gather_is_identity():
    assert world_info() == (0, 1)
    x = torch.randn(3, 2)
    gathered, offset = gather_with_grad(x)
    assert gathered is x and offset == 0
