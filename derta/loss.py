"""The DeRTa objective (paper Eq. 2) as label rewriting plus one cross-entropy.

Paper Eq. 2 (arXiv 2407.09121):

    L = - E log P(r | q, r_hat_<k)                        MLE with harmful prefix
        - E sum_{t=1..|r_hat|} log P(sorry | q, r_hat_<t)  RTO

Both terms are token-level cross-entropy. The harmful-prefix term is plain MLE
on a rewritten *input* (built by the data step); the RTO term is MLE on
rewritten *labels*: an RTO instance is (q + r_hat) whose every response target
is the refusal token. So the whole objective is :func:`rto_labels` (run in
data collation or right before the loss) followed by :func:`derta_loss`.

Label convention (Hugging Face): ``labels`` (B, T) is aligned with
``input_ids``; the model output at position t predicts ``labels[:, t + 1]``
(the loss uses ``hidden[:, :-1]`` against ``labels[:, 1:]``), and
``IGNORE_INDEX`` (-100) marks positions without a target (prompt, padding).
With this shift the RTO target at response token t is predicted from
q + r_hat_<t, for t = 1..|r_hat|, exactly the sum in Eq. 2.

Reduction: like the release, which concatenates every sample's relabelled
targets and applies one ``CrossEntropyLoss``, the loss is the mean over all
non-ignored target tokens in the batch, MLE and RTO targets together (no
per-instance or per-term weighting).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

__all__ = [
    "IGNORE_INDEX",
    "LossOutput",
    "derta_loss",
    "release_reference_loss",
    "rto_labels",
]


def rto_labels(
    labels: torch.Tensor,
    is_rto: torch.Tensor,
    refusal_id: int,
    keep_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rewrite the labels of RTO rows to the refusal token (paper Eq. 2, RTO term).

    labels: LongTensor (B, T), HF convention, IGNORE_INDEX = no target.
    is_rto: BoolTensor (B,); True marks an RTO instance (q + harmful response;
        "safe": "true" in the release's training format).
    refusal_id: the refusal token id ("Sorry"), taken from the tokenizer.
    keep_ratio: probability that each RTO target is kept; dropped targets
        become IGNORE_INDEX. Appendix A: full-parameter runs keep 5% (0.05),
        LoRA runs keep 100% (1.0).
    generator: seeded ``torch.Generator`` on ``labels.device`` for the keep
        draw. One uniform is drawn per (B, T) position, so the draw depends on
        the batch shape. ``keep_ratio`` of 1.0 or 0.0 draws nothing.

    Returns a new LongTensor (B, T); the input is not modified. Rows with
    ``is_rto`` False are unchanged. For RTO rows every position with a target
    (labels != IGNORE_INDEX) gets ``refusal_id`` if kept, else IGNORE_INDEX.

    Like the paper, no minimum number of kept targets is enforced: at small
    keep ratios an RTO row can end up with zero targets (e.g. a 20-token
    response at 5% keeps none with probability 0.95**20 = 0.36). Such a row
    simply contributes nothing to the loss.
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be (B, T), got shape {tuple(labels.shape)}")
    if is_rto.shape != labels.shape[:1]:
        raise ValueError(
            f"is_rto must be (B,) = ({labels.shape[0]},), got shape {tuple(is_rto.shape)}"
        )
    if not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in [0, 1], got {keep_ratio}")
    target = (labels != IGNORE_INDEX) & is_rto.to(device=labels.device, dtype=torch.bool)[:, None]
    out = labels.masked_fill(target, refusal_id)
    if keep_ratio < 1.0:
        if keep_ratio == 0.0:
            dropped = target
        else:
            draw = torch.rand(labels.shape, generator=generator, device=labels.device)
            dropped = target & (draw >= keep_ratio)
        out = out.masked_fill(dropped, IGNORE_INDEX)
    return out


def _acc_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp32 for bf16/fp16/fp32 inputs, fp64 for fp64."""
    out = torch.float32
    for d in dtypes:
        out = torch.promote_types(out, d)
    return out


class LossOutput(NamedTuple):
    """Result of :func:`derta_loss`.

    loss: scalar with grad in the accumulation dtype (fp32; fp64 for fp64
        inputs); mean CE over all target tokens (MLE + RTO).
    mle_loss, rto_loss: detached scalars for logging; mean CE over the
        targets in non-RTO rows / RTO rows. When a part has no targets
        (n == 0) its value is 0.0, not NaN, so token-weighted aggregation
        (sum of value * n over steps, divided by sum of n) stays finite.
    n_mle_tokens, n_rto_tokens: number of targets in each part.
    """

    loss: torch.Tensor
    mle_loss: torch.Tensor
    rto_loss: torch.Tensor
    n_mle_tokens: int
    n_rto_tokens: int


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(h_i @ W.T, t_i) with the gradient computed inside the forward.

    h: (N, H) target rows only; weight: (V, H); targets: (N,) in [0, V).
    The (N, V) logits are never materialised: rows go through the head
    ``chunk_size`` at a time; each chunk's logits, in the accumulation dtype
    (fp32 for bf16/fp16/fp32 inputs, fp64 for fp64), are turned in place
    into softmax - onehot (the gradient of CE w.r.t. the logits) and
    multiplied straight into grad_h (N, H) and grad_w (V, H), both kept in
    the accumulation dtype. Only those two are kept for backward, which
    scales them by grad_output and casts them to the inputs' dtypes.
    Memory beyond the inputs: one (chunk_size, V) buffer, grad_h, grad_w,
    and an fp32 copy of the weight when it is bf16/fp16.

    Returns (loss_sum: scalar, per_token: (N,), non-differentiable).
    The saved gradients are scaled in place, so this graph supports a single
    backward pass (no retain_graph double backward).
    """

    @staticmethod
    def forward(ctx, h, weight, targets, chunk_size, need_grad_h, need_grad_w):
        n, hdim = h.shape
        vocab = weight.shape[0]
        acc = _acc_dtype(h.dtype, weight.dtype)
        w32 = weight.to(acc)  # no copy for fp32 weights
        per_token = torch.empty(n, dtype=acc, device=h.device)
        grad_h = torch.empty(n, hdim, dtype=acc, device=h.device) if need_grad_h else None
        grad_w = torch.zeros(vocab, hdim, dtype=acc, device=h.device) if need_grad_w else None
        # one (chunk, V) buffer reused by every chunk: one allocation, one set of page faults
        buf = torch.empty(min(chunk_size, n), vocab, dtype=acc, device=h.device)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            hc = h[start:end].to(acc)
            tc = targets[start:end]
            rows = torch.arange(end - start, device=h.device)
            logits = torch.mm(hc, w32.T, out=buf[: end - start])  # (C, V) in acc dtype
            target_logit = logits[rows, tc]
            row_max = logits.amax(dim=1, keepdim=True)
            logits.sub_(row_max).exp_()
            sum_exp = logits.sum(dim=1, keepdim=True)
            # CE_i = logsumexp_i - logit_i[t_i]
            per_token[start:end] = (row_max + sum_exp.log()).squeeze(1) - target_logit
            if need_grad_h or need_grad_w:
                probs = logits.div_(sum_exp)
                probs[rows, tc] -= 1.0  # dCE/dlogits = softmax - onehot
                if need_grad_h:
                    torch.mm(probs, w32, out=grad_h[start:end])
                if need_grad_w:
                    grad_w.addmm_(probs.T, hc)
                del probs
            del logits
        del buf
        ctx.grad_h, ctx.grad_w = grad_h, grad_w
        ctx.h_dtype, ctx.w_dtype = h.dtype, weight.dtype
        ctx.used = False
        ctx.mark_non_differentiable(per_token)
        return per_token.sum(), per_token

    @staticmethod
    def backward(ctx, grad_loss, _grad_per_token):
        if ctx.used:
            raise RuntimeError("derta_loss (chunked) supports a single backward pass per forward")
        ctx.used = True
        grad_h, grad_w = ctx.grad_h, ctx.grad_w
        ctx.grad_h = ctx.grad_w = None  # scaled in place below
        go = grad_loss.to(grad_h.dtype if grad_h is not None else grad_w.dtype)
        out_h = grad_h.mul_(go).to(ctx.h_dtype) if grad_h is not None else None
        out_w = grad_w.mul_(go).to(ctx.w_dtype) if grad_w is not None else None
        return out_h, out_w, None, None, None, None


def derta_loss(
    logits_or_hidden: torch.Tensor,
    labels: torch.Tensor,
    is_rto: torch.Tensor | None = None,
    *,
    lm_head_weight: torch.Tensor | None = None,
    chunk_size: int = 1024,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> LossOutput:
    """The DeRTa objective (paper Eq. 2): token-mean CE over all targets.

    logits_or_hidden: logits (B, T, V) when ``lm_head_weight`` is None, else
        the model's last hidden states (B, T, H) (after the final norm).
    labels: LongTensor (B, T), HF convention (aligned with input_ids, shifted
        here), already rewritten by :func:`rto_labels` for RTO rows.
    is_rto: BoolTensor (B,) or None (= no RTO rows); used only to split the
        logged loss into its MLE and RTO parts, the objective itself is plain
        cross-entropy on ``labels``.
    lm_head_weight: (V, H) LM-head weight (no bias, no logit scaling). When
        given, the loss runs through :class:`_ChunkedLinearCrossEntropy`:
        only target rows go through the head, ``chunk_size`` rows at a time,
        and no (N, V) tensor is kept for backward.
    num_items_in_batch: denominator override (HF Trainer's gradient
        accumulation passes the number of targets over all micro-batches);
        default: the number of targets in this batch.

    Any float dtype is accepted; softmax and accumulation run in fp32 (fp64
    for fp64 inputs), the loss is in that dtype and gradients come back in
    the inputs' dtypes. A batch with
    no targets gives loss 0.0 with zero gradients (not NaN).
    """
    _check_loss_inputs(logits_or_hidden, labels, chunk_size)
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX  # (B, T-1)
    targets = shift_labels[mask]  # (N,)
    states = logits_or_hidden[:, :-1][mask]  # (N, V) logits or (N, H) hidden
    needs_grad = torch.is_grad_enabled() and logits_or_hidden.requires_grad
    loss_sum, per_token = _target_losses(states, targets, lm_head_weight, chunk_size, needs_grad)
    denom = max(targets.numel(), 1) if num_items_in_batch is None else num_items_in_batch
    return _split_by_rto(loss_sum / denom, per_token, mask, is_rto)


def _check_loss_inputs(logits_or_hidden: torch.Tensor, labels: torch.Tensor, chunk_size: int) -> None:
    if labels.dim() != 2:
        raise ValueError(f"labels must be (B, T), got shape {tuple(labels.shape)}")
    if logits_or_hidden.shape[:2] != labels.shape:
        raise ValueError(
            f"first argument {tuple(logits_or_hidden.shape)} does not match labels "
            f"{tuple(labels.shape)} in (B, T)"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _target_losses(states: torch.Tensor, targets: torch.Tensor, lm_head_weight: torch.Tensor | None,
                   chunk_size: int, states_need_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed CE, detached per-target CE) over the target rows: from the logits directly, or
    through the LM head chunk by chunk (:class:`_ChunkedLinearCrossEntropy`)."""
    if lm_head_weight is None:
        per_token = F.cross_entropy(states.to(_acc_dtype(states.dtype)), targets, reduction="none")
        return per_token.sum(), per_token.detach()
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != states.shape[-1]:
        raise ValueError(
            f"lm_head_weight must be (V, H={states.shape[-1]}), got "
            f"{tuple(lm_head_weight.shape)}"
        )
    weight_needs_grad = torch.is_grad_enabled() and lm_head_weight.requires_grad
    return _ChunkedLinearCrossEntropy.apply(states, lm_head_weight, targets, chunk_size, states_need_grad, weight_needs_grad)


def _split_by_rto(loss: torch.Tensor, per_token: torch.Tensor, mask: torch.Tensor,
                  is_rto: torch.Tensor | None) -> LossOutput:
    """The objective with its logged MLE and RTO parts (each the mean over its own targets)."""
    if is_rto is None:
        token_rto = torch.zeros_like(per_token, dtype=torch.bool)
    else:
        token_rto = is_rto.to(device=mask.device, dtype=torch.bool)[:, None].expand_as(mask)[mask]
    n_rto = int(token_rto.sum())
    n_mle = per_token.numel() - n_rto
    zero = per_token.new_zeros(())
    mle_loss = per_token[~token_rto].sum() / n_mle if n_mle else zero
    rto_loss = per_token[token_rto].sum() / n_rto if n_rto else zero
    return LossOutput(loss, mle_loss, rto_loss, n_mle, n_rto)


def release_reference_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    is_rto: torch.Tensor,
    refusal_id: int,
) -> torch.Tensor:
    """The release's loss, kept as the naive reference (tests and bench only).

    logits (B, T, V), labels (B, T) *before* RTO relabelling, is_rto (B,).
    Mirrors the release's patched ``forward``: full fp32 logits, a
    per-sample Python loop that copies each sample's shifted labels and sets
    every target of an RTO sample to ``refusal_id`` (keep 100%), the
    samples' labels concatenated, then one ``CrossEntropyLoss`` over the
    flattened (B * (T-1), V) logits. Returns the fp32 mean over non-ignored
    targets (NaN if there are none, like ``CrossEntropyLoss``). Do not train
    with this: it is the anti-pattern the chunked :func:`derta_loss` replaces.
    """
    logits = logits.float()
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    sample_labels = []
    for i in range(shift_labels.shape[0]):
        relabelled = shift_labels[i].clone()
        if bool(is_rto[i]):
            relabelled[relabelled != IGNORE_INDEX] = refusal_id
        sample_labels.append(relabelled)
    loss_fct = torch.nn.CrossEntropyLoss()
    return loss_fct(shift_logits.view(-1, shift_logits.shape[-1]), torch.cat(sample_labels))
