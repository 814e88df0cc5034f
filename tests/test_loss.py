"""derta.loss against reference computations on tiny seeded tensors (CONVENTIONS 6)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from derta.loss import IGNORE_INDEX, derta_loss, release_reference_loss, rto_labels

REFUSAL = 3


def make_batch(b=4, t=13, v=11, h=6, dtype=torch.float64, seed=0):
    """Seeded (hidden (B,T,H), weight (V,H), labels (B,T), is_rto (B,)).

    Rows have different prompt lengths; row 2 ends in padding; rows 1 and 3 are RTO.
    """
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g, dtype=torch.float64).to(dtype)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, v, (b, t), generator=g)
    for i in range(b):
        labels[i, : 2 + i] = IGNORE_INDEX
    labels[2, t - 3 :] = IGNORE_INDEX
    is_rto = torch.tensor([i % 2 == 1 for i in range(b)])
    return hidden, weight, labels, is_rto


def per_sample_loop_loss(logits, labels, is_rto, refusal_id):
    """Hand-written reference: sum over every (row, position) of -log softmax, / count."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    total, count = 0.0, 0
    for i in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            y = int(labels[i, t])
            if y == IGNORE_INDEX:
                continue
            if bool(is_rto[i]):
                y = refusal_id
            total -= float(logp[i, t - 1, y])
            count += 1
    return total / count


# ---------------------------------------------------------------- rto_labels


def test_rto_labels_keep_all_rewrites_response_of_rto_rows_only():
    _, _, labels, is_rto = make_batch()
    before = labels.clone()
    out = rto_labels(labels, is_rto, REFUSAL, 1.0)
    assert torch.equal(labels, before), "input modified"
    assert out.data_ptr() != labels.data_ptr()
    for i in range(labels.shape[0]):
        if is_rto[i]:
            expected = torch.where(labels[i] != IGNORE_INDEX, REFUSAL, IGNORE_INDEX)
            assert torch.equal(out[i], expected)
        else:
            assert torch.equal(out[i], labels[i])


def test_rto_labels_keep_ratio_fraction_and_determinism():
    b, t, keep = 64, 512, 0.05
    labels = torch.randint(0, 100, (b, t), generator=torch.Generator().manual_seed(1))
    labels[:, :100] = IGNORE_INDEX
    is_rto = torch.arange(b) % 2 == 0
    before = labels.clone()
    out1 = rto_labels(labels, is_rto, REFUSAL, keep, generator=torch.Generator().manual_seed(7))
    out2 = rto_labels(labels, is_rto, REFUSAL, keep, generator=torch.Generator().manual_seed(7))
    out3 = rto_labels(labels, is_rto, REFUSAL, keep, generator=torch.Generator().manual_seed(8))
    assert torch.equal(labels, before)
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, out3)
    rto_targets = int(((labels != IGNORE_INDEX) & is_rto[:, None]).sum())
    kept = out1[is_rto]
    assert set(kept[kept != IGNORE_INDEX].unique().tolist()) == {REFUSAL}
    frac = int((kept != IGNORE_INDEX).sum()) / rto_targets
    # 13,184 Bernoulli(0.05) draws: sd = 0.0019, so 0.01 is > 5 sd
    assert abs(frac - keep) < 0.01, frac
    # kept positions are a subset of the response positions
    assert bool(((out1 != IGNORE_INDEX) <= (labels != IGNORE_INDEX)).all())
    assert torch.equal(out1[~is_rto], labels[~is_rto])


def test_rto_labels_keep_zero_and_validation():
    _, _, labels, is_rto = make_batch()
    out = rto_labels(labels, is_rto, REFUSAL, 0.0)
    assert bool((out[is_rto] == IGNORE_INDEX).all())
    assert torch.equal(out[~is_rto], labels[~is_rto])
    with pytest.raises(ValueError, match="keep_ratio"):
        rto_labels(labels, is_rto, REFUSAL, 1.5)
    with pytest.raises(ValueError, match="is_rto"):
        rto_labels(labels, is_rto[:2], REFUSAL, 1.0)


# ---------------------------------------------------------------- logits path


def test_uniform_logits_give_log_vocab():
    v = 37
    logits = torch.zeros(2, 5, v, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX]])
    out = derta_loss(logits, labels, torch.tensor([False, True]))
    assert out.loss.item() == pytest.approx(math.log(v), rel=1e-12)
    assert out.mle_loss.item() == pytest.approx(math.log(v), rel=1e-12)
    assert out.rto_loss.item() == pytest.approx(math.log(v), rel=1e-12)
    assert (out.n_mle_tokens, out.n_rto_tokens) == (4, 2)
    # chunked path on hidden = 0 gives uniform logits too
    hidden = torch.zeros(2, 5, 3, dtype=torch.float64)
    weight = torch.randn(v, 3, dtype=torch.float64)
    out = derta_loss(hidden, labels, None, lm_head_weight=weight, chunk_size=2)
    assert out.loss.item() == pytest.approx(math.log(v), rel=1e-12)


def test_logits_path_equals_release_reference_and_hand_loop():
    hidden, weight, labels, is_rto = make_batch()
    logits = hidden @ weight.T
    ours = derta_loss(logits, rto_labels(labels, is_rto, REFUSAL, 1.0), is_rto)
    release = release_reference_loss(logits, labels, is_rto, REFUSAL)
    hand = per_sample_loop_loss(logits, labels, is_rto, REFUSAL)
    assert ours.loss.item() == pytest.approx(hand, rel=1e-12)
    assert release.item() == pytest.approx(hand, rel=1e-6)  # release runs in fp32


def test_rto_keep_one_is_cross_entropy_against_refusal_at_every_response_position():
    """CONVENTIONS 6: RTO with keep 1 == CE against the refusal token at each response position."""
    hidden, weight, labels, _ = make_batch()
    all_rto = torch.ones(labels.shape[0], dtype=torch.bool)
    logits = hidden @ weight.T
    out = derta_loss(logits, rto_labels(labels, all_rto, REFUSAL, 1.0), all_rto)
    response = labels[:, 1:] != IGNORE_INDEX  # positions t whose next token is response
    logp_refusal = torch.log_softmax(logits[:, :-1], dim=-1)[..., REFUSAL]
    expected = -logp_refusal[response].mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert out.rto_loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert out.n_mle_tokens == 0 and out.mle_loss.item() == 0.0
    assert out.n_rto_tokens == int(response.sum())


def test_split_parts_are_per_row_means_and_loss_is_token_mean():
    hidden, weight, labels, is_rto = make_batch()
    logits = hidden @ weight.T
    rto = rto_labels(labels, is_rto, REFUSAL, 1.0)
    out = derta_loss(logits, rto, is_rto)
    mle_only = derta_loss(logits[~is_rto], rto[~is_rto])
    rto_only = derta_loss(logits[is_rto], rto[is_rto])
    assert out.mle_loss.item() == pytest.approx(mle_only.loss.item(), rel=1e-12)
    assert out.rto_loss.item() == pytest.approx(rto_only.loss.item(), rel=1e-12)
    n = out.n_mle_tokens + out.n_rto_tokens
    token_mean = (out.mle_loss * out.n_mle_tokens + out.rto_loss * out.n_rto_tokens) / n
    assert out.loss.item() == pytest.approx(token_mean.item(), rel=1e-12)
    assert not out.mle_loss.requires_grad and not out.rto_loss.requires_grad


def test_num_items_in_batch_overrides_denominator():
    hidden, weight, labels, is_rto = make_batch()
    logits = hidden @ weight.T
    out = derta_loss(logits, labels, is_rto)
    n = out.n_mle_tokens + out.n_rto_tokens
    scaled = derta_loss(logits, labels, is_rto, num_items_in_batch=3 * n)
    assert scaled.loss.item() == pytest.approx(out.loss.item() / 3, rel=1e-12)


# ---------------------------------------------------------------- chunked path


def _grads(fn, *xs):
    for x in xs:
        x.grad = None
    out = fn()
    out.loss.backward()
    return out, [x.grad.clone() if x.grad is not None else None for x in xs]


@pytest.mark.parametrize("chunk_size", [1, 4, 8, 1024])
def test_chunked_equals_logits_path_fp64(chunk_size):
    hidden, weight, labels, is_rto = make_batch()
    labels = rto_labels(labels, is_rto, REFUSAL, 1.0)
    n_targets = int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert n_targets % 8 and n_targets > 8  # 4 and 8 are smaller than N and do not divide it
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    ref, (gh_ref, gw_ref) = _grads(lambda: derta_loss(hidden @ weight.T, labels, is_rto), hidden, weight)
    out, (gh, gw) = _grads(
        lambda: derta_loss(hidden, labels, is_rto, lm_head_weight=weight, chunk_size=chunk_size),
        hidden, weight,
    )
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-12)
    assert out.mle_loss.item() == pytest.approx(ref.mle_loss.item(), rel=1e-12)
    assert out.rto_loss.item() == pytest.approx(ref.rto_loss.item(), rel=1e-12)
    assert (out.n_mle_tokens, out.n_rto_tokens) == (ref.n_mle_tokens, ref.n_rto_tokens)
    torch.testing.assert_close(gh, gh_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-12)
    # ignored positions (prompt, padding, last position) get exactly zero gradient
    no_target = torch.ones_like(labels, dtype=torch.bool)
    no_target[:, :-1] = labels[:, 1:] == IGNORE_INDEX
    assert bool((gh[no_target] == 0).all())


@pytest.mark.parametrize("chunk_size", [3, 16])
def test_chunked_equals_logits_path_fp32(chunk_size):
    hidden, weight, labels, is_rto = make_batch(v=300, h=16, t=29, dtype=torch.float32)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    ref, (gh_ref, gw_ref) = _grads(lambda: derta_loss(hidden @ weight.T, labels, is_rto), hidden, weight)
    out, (gh, gw) = _grads(
        lambda: derta_loss(hidden, labels, is_rto, lm_head_weight=weight, chunk_size=chunk_size),
        hidden, weight,
    )
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh, gh_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_chunked_low_precision(dtype):
    hidden, weight, labels, is_rto = make_batch(v=300, h=16, t=29, dtype=dtype)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    out, (gh, gw) = _grads(
        lambda: derta_loss(hidden, labels, is_rto, lm_head_weight=weight, chunk_size=5),
        hidden, weight,
    )
    assert out.loss.dtype == torch.float32 and gh.dtype == dtype and gw.dtype == dtype
    assert torch.isfinite(out.loss)
    # exact reference: same bf16/fp16 values upcast to fp64
    h64 = hidden.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    ref, (gh64, gw64) = _grads(lambda: derta_loss(h64 @ w64.T, labels, is_rto), h64, w64)
    torch.testing.assert_close(out.loss.double(), ref.loss, rtol=1e-5, atol=1e-5)
    # the only error left is the final cast of the gradients to bf16/fp16
    tol = {torch.bfloat16: 2**-8, torch.float16: 2**-11}[dtype]
    torch.testing.assert_close(gh.double(), gh64, rtol=tol, atol=1e-6)
    torch.testing.assert_close(gw.double(), gw64, rtol=tol, atol=1e-6)
    # against the naive low-precision path (logits rounded to bf16/fp16): loose
    ref_lp, (gh_lp, gw_lp) = _grads(lambda: derta_loss(hidden @ weight.T, labels, is_rto), hidden, weight)
    torch.testing.assert_close(out.loss, ref_lp.loss, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gh.float(), gh_lp.float(), rtol=5e-2, atol=2e-3)
    torch.testing.assert_close(gw.float(), gw_lp.float(), rtol=5e-2, atol=2e-3)


def test_chunked_weight_without_grad():
    hidden, weight, labels, is_rto = make_batch()
    hidden.requires_grad_(True)
    ref, (gh_ref,) = _grads(lambda: derta_loss(hidden @ weight.T, labels, is_rto), hidden)
    out, (gh,) = _grads(lambda: derta_loss(hidden, labels, is_rto, lm_head_weight=weight, chunk_size=4), hidden)
    assert weight.grad is None
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-12)
    torch.testing.assert_close(gh, gh_ref, rtol=1e-10, atol=1e-12)


def test_chunked_hidden_without_grad_and_no_grad_mode():
    hidden, weight, labels, is_rto = make_batch()
    weight.requires_grad_(True)
    ref, (gw_ref,) = _grads(lambda: derta_loss(hidden @ weight.T, labels, is_rto), weight)
    out, (gw,) = _grads(lambda: derta_loss(hidden, labels, is_rto, lm_head_weight=weight, chunk_size=4), weight)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        evaluated = derta_loss(hidden, labels, is_rto, lm_head_weight=weight)
    assert not evaluated.loss.requires_grad
    assert evaluated.loss.item() == pytest.approx(ref.loss.item(), rel=1e-12)


@pytest.mark.parametrize("chunked", [False, True])
def test_zero_targets_give_zero_loss_and_zero_grad(chunked):
    hidden, weight, labels, is_rto = make_batch(dtype=torch.float32)
    labels = torch.full_like(labels, IGNORE_INDEX)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    if chunked:
        fn = lambda: derta_loss(hidden, labels, is_rto, lm_head_weight=weight)  # noqa: E731
    else:
        fn = lambda: derta_loss(hidden @ weight.T, labels, is_rto)  # noqa: E731
    out, (gh, gw) = _grads(fn, hidden, weight)
    assert out.loss.item() == 0.0 and not torch.isnan(out.loss)
    assert (out.n_mle_tokens, out.n_rto_tokens) == (0, 0)
    assert out.mle_loss.item() == 0.0 and out.rto_loss.item() == 0.0
    assert bool((gh == 0).all()) and bool((gw == 0).all())


def test_rto_row_with_zero_kept_targets_contributes_nothing():
    hidden, weight, labels, is_rto = make_batch()
    dropped = rto_labels(labels, is_rto, REFUSAL, 0.0)
    logits = hidden @ weight.T
    out = derta_loss(logits, dropped, is_rto)
    mle_only = derta_loss(logits[~is_rto], labels[~is_rto])
    assert out.n_rto_tokens == 0 and out.rto_loss.item() == 0.0
    assert out.loss.item() == pytest.approx(mle_only.loss.item(), rel=1e-12)


def test_chunked_single_backward_only():
    hidden, weight, labels, is_rto = make_batch()
    hidden.requires_grad_(True)
    out = derta_loss(hidden, labels, is_rto, lm_head_weight=weight)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="single backward"):
        out.loss.backward()


def test_shape_errors():
    hidden, weight, labels, is_rto = make_batch()
    with pytest.raises(ValueError, match="lm_head_weight"):
        derta_loss(hidden, labels, is_rto, lm_head_weight=weight[:, :-1])
    with pytest.raises(ValueError, match="does not match"):
        derta_loss(hidden[:, :-1], labels, is_rto, lm_head_weight=weight)
    with pytest.raises(ValueError, match="chunk_size"):
        derta_loss(hidden, labels, is_rto, lm_head_weight=weight, chunk_size=0)


def test_release_reference_is_flat_cross_entropy_on_relabelled_targets():
    hidden, weight, labels, is_rto = make_batch(dtype=torch.float32)
    logits = hidden @ weight.T
    relabelled = rto_labels(labels, is_rto, REFUSAL, 1.0)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), relabelled[:, 1:].reshape(-1))
    got = release_reference_loss(logits, labels, is_rto, REFUSAL)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
