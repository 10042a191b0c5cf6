"""Losses for next-item training, kept apart from the models: a model maps tensors to tensors,
a loss judges them.

Every loss takes hidden states at the positions that have a target, (M, D), and the targets
as item columns, (M,). Models provide `output_embeddings() -> (N, D)` and `output_bias() ->
(N,) | None`; sampled losses score only the items they need, through
`output_rows(cols) -> (..., D)` and `output_bias_rows(cols)` when the model has them (so an
item table with sparse gradients stays sparse), else by indexing the full matrices.

- `ce`               full-catalogue softmax cross-entropy (exact, N logits per row)
- `sampled_softmax`  softmax over the target, `negatives` sampled items shared by the batch
                     and up to `in_batch` of the batch's own targets; each logit corrected by
                     -log E[count of the item among the candidates] (log-Q correction, on
                     unless `logq=False`), accidental hits masked. Its cost per step does not
                     depend on the catalogue size: it never builds an (M, N) tensor, samples
                     by binary search in a precomputed CDF, and reads item vectors through
                     `model.output_rows` (sparse gradients when the model's table is sparse)
- `bce`              binary cross-entropy: target vs `negatives` sampled items per row
- `bpr`              Bayesian personalised ranking: -log sigmoid(target - negative)

Event kinds and weights. `history_events` (B, L), the event-kind tokens of the inputs, goes to
the model's `encode` beside the items (models that read kinds). `weights` (B, L) multiplies
each position's loss (event weights, the interactions' weight column); the batch loss is then
the weighted sum divided by the number of positions with a target, so weights of 1 give the
plain mean and weights of 2 twice it. Positions whose next event is not a targeted kind have a
PAD target and no loss at all (trainer/families/next_item.py).

Popularity debiasing. Training logs are skewed towards popular items, and a model fitted to
them learns that skew. Two options counter it:
- popularity-weighted negatives (`NegativeSampler(kind="popularity", alpha=...)`): popular
  items are drawn as negatives more often; without log-Q correction this pushes them down,
  with it the sampled softmax estimates the full softmax again (unbiased, popularity kept).
- logit adjustment (`debias=tau`, Menon et al. 2021, "Long-tail learning via logit
  adjustment"): during training every logit gets `tau * log p(item)` added, p the items'
  training frequency, so the model itself only has to explain what popularity does not; the
  served scores are the model's own, without the prior, so popular items lose the boost.
  tau = 0 is plain training, tau = 1 removes the prior entirely (for the softmax losses).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from recsys.schema import FIRST_TOKEN, PAD

__all__ = ["LOSSES", "NegativeSampler", "log_prior", "next_item_loss"]

LOSSES = ("ce", "sampled_softmax", "bce", "bpr")


class NegativeSampler:
    """Draws item columns uniformly or in proportion to popularity ** alpha.

    Popularity draws are a binary search of uniform numbers in the CDF computed once here, so a
    draw of K items costs O(K log N), not O(N) as a multinomial over N weights would.
    """

    def __init__(self, popularity: torch.Tensor, kind: str = "uniform", alpha: float = 0.75):
        if kind not in ("uniform", "popularity"):
            raise ValueError(f"negative_sampling must be uniform or popularity, got {kind!r}")
        if not alpha >= 0:
            raise ValueError(f"negative_alpha must be >= 0, got {alpha}")
        n = len(popularity)
        weights = torch.ones(n) if kind == "uniform" else popularity.double().clamp(min=1) ** alpha
        probs = weights / weights.sum()
        self.probs = probs.float()  # (N,)
        self.log_q = self.probs.log()  # (N,)
        self.cdf = probs.cumsum(0)  # (N,) float64: float32 steps vanish past ~1e7 items
        self.uniform = kind == "uniform"
        self.n = n

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        """int64 item columns of `shape`, drawn independently with replacement."""
        if self.uniform:
            return torch.randint(0, self.n, shape, generator=generator)
        u = torch.rand(shape, dtype=torch.float64, generator=generator) * self.cdf[-1]
        return torch.searchsorted(self.cdf, u, right=True).clamp_(max=self.n - 1)


def log_prior(counts: torch.Tensor) -> torch.Tensor:
    """(N,) training interaction counts -> (N,) log of the items' frequency; unseen items count 1."""
    counts = counts.double().clamp(min=1)
    return (counts / counts.sum()).log().float()


def seen_mask(
    inputs: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, num_items: int, older: torch.Tensor | None = None
) -> torch.Tensor:
    """(M, N) bool: True where the user has seen the item by the row's position.

    inputs (B, L) tokens, mask (B, L) the positions with a target (M of them, row order of
    `inputs[mask]`), pos (M,) their target columns, older (B, K) tokens seen before the window
    (PAD-padded; None: only the window counts). A target is never masked, even when it was seen
    before (data with repeats).
    """
    b, l = inputs.shape
    rows_b, rows_t = mask.nonzero(as_tuple=True)  # (M,) each
    if older is not None:
        seen = torch.zeros(b, num_items + FIRST_TOKEN, dtype=torch.bool, device=inputs.device).scatter_(1, older, True)
        seen = seen[rows_b]  # (M, N + FIRST_TOKEN), a copy per row
    else:
        seen = torch.zeros(len(pos), num_items + FIRST_TOKEN, dtype=torch.bool, device=inputs.device)
    before = torch.arange(l, device=inputs.device).unsqueeze(0) <= rows_t.unsqueeze(1)  # (M, L)
    seen.scatter_(1, torch.where(before, inputs[rows_b], PAD), True)  # PAD and OOV columns dropped below
    seen = seen[:, FIRST_TOKEN:]
    seen[torch.arange(len(pos), device=inputs.device), pos] = False
    return seen


def _rows(model: nn.Module, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Output vectors (*cols.shape, D) and biases (*cols.shape) or None of item columns `cols`,
    read row by row when the model offers it (sparse gradients), else from the full matrices."""
    emb = model.output_rows(cols) if hasattr(model, "output_rows") else model.output_embeddings()[cols]
    if hasattr(model, "output_bias_rows"):
        return emb, model.output_bias_rows(cols)
    bias = model.output_bias()
    return emb, None if bias is None else bias[cols]


def _scores(model: nn.Module, hidden: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """hidden (M, D), cols (M, K) or (K,) -> (M, K) scores of those items."""
    emb, bias = _rows(model, cols)  # (M, K, D) or (K, D)
    if cols.dim() == 1:
        out = hidden @ emb.T
    else:
        out = torch.einsum("md,mkd->mk", hidden, emb)
    return out if bias is None else out + bias


def next_item_loss(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    older: torch.Tensor | None = None,
    *,
    loss: str = "ce",
    sampler: NegativeSampler | None = None,
    negatives: int = 1,
    logq: bool = True,
    debias: float = 0.0,
    prior: torch.Tensor | None = None,
    mask_seen: bool = False,
    in_batch: int = 0,
    history_events: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loss over every non-padded position of a sequential model.

    inputs, targets (B, L) tokens, left-padded: targets[b, t] is the item after inputs[b, :t+1];
    PAD targets are ignored. `logq` turns the sampled softmax's log-Q correction on or off;
    `debias` > 0 adds `debias * prior[item]` to every training logit (logit adjustment; `prior`
    (N,) from `log_prior`, required then). `mask_seen` (ce only) leaves the items the user saw
    up to each position out of that position's softmax (`seen_mask`), as serving with
    exclude_seen leaves them out of the ranking; `older` (B, K) tokens, PAD-padded: what each
    window's user saw before the window (trainer.data.batches.older_items), masked too when given.
    `in_batch` (sampled_softmax): up to this many of the batch's targets, drawn at random, join
    the shared negatives (their sampling distribution is the data's, which log-Q accounts for).
    `history_events` (B, L) event-kind tokens for models that read kinds; `weights` (B, L)
    per-position loss weights (module docstring). A batch without a target gives a zero loss.
    """
    if debias and prior is None:
        raise ValueError("debias > 0 needs the items' log prior")

    def adjusted(scores: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return scores + debias * prior[cols] if debias else scores

    hidden = model.encode(inputs) if history_events is None else model.encode(inputs, history_events)  # (B, L, D)
    mask = targets != PAD
    if not bool(mask.any()):
        return hidden.sum() * 0.0  # nothing to predict here: no gradient, and no NaN from an empty mean
    h = hidden[mask]  # (M, D)
    pos = targets[mask] - FIRST_TOKEN  # (M,)

    def losses(reduction: str) -> torch.Tensor:
        """The loss of the M target positions: their mean ("mean") or one each ("none", (M,))."""
        if loss == "ce":
            logits = model.score(h)  # (M, N)
            if mask_seen:
                # In place and outside autograd: a masked item's softmax probability is 0, so its
                # gradient is 0 without a masking step in the backward pass (and no second copy of
                # the (M, N) logits); cross_entropy keeps its own output for the backward.
                with torch.no_grad():
                    logits.masked_fill_(seen_mask(inputs, mask, pos, logits.shape[1], older), -1e9)
            return F.cross_entropy(logits + debias * prior if debias else logits, pos, reduction=reduction)
        if sampler is None:
            raise ValueError(f"loss {loss!r} needs a negative sampler")
        if loss == "sampled_softmax":
            return _sampled_softmax(model, h, pos, sampler, negatives, in_batch, logq, adjusted, reduction)
        neg = sampler.sample((len(pos), negatives))  # (M, K)
        s_pos = adjusted(_scores(model, h, pos.unsqueeze(1)), pos.unsqueeze(1))  # (M, 1)
        s_neg = adjusted(_scores(model, h, neg), neg)  # (M, K)
        if loss == "bce":
            if reduction == "mean":
                return F.binary_cross_entropy_with_logits(
                    s_pos, torch.ones_like(s_pos)
                ) + F.binary_cross_entropy_with_logits(s_neg, torch.zeros_like(s_neg))
            positive = F.binary_cross_entropy_with_logits(s_pos, torch.ones_like(s_pos), reduction="none")[:, 0]
            negative = F.binary_cross_entropy_with_logits(s_neg, torch.zeros_like(s_neg), reduction="none")
            return positive + negative.mean(dim=1)
        if loss == "bpr":
            pairs = -F.logsigmoid(s_pos - s_neg)  # (M, K)
            return pairs.mean() if reduction == "mean" else pairs.mean(dim=1)
        raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")

    if weights is None:
        return losses("mean")
    rows = losses("none")  # (M,)
    return (rows * weights[mask].to(rows.dtype)).sum() / len(rows)


def _sampled_softmax(
    model, h, pos, sampler, negatives: int, in_batch: int, logq: bool, adjusted, reduction: str = "mean"
) -> torch.Tensor:
    """h (M, D), pos (M,) target columns -> the sampled softmax over [target, K + I candidates].

    The candidates, K sampled items and I of the batch's targets, are shared by every row: one
    (M, D) x (D, K + I) product. Their log-Q correction is the log of each item's expected count
    among them, K q(item) + I p(item), with p the batch's own target frequencies (the in-batch
    draw's distribution); a candidate equal to a row's target (an accidental hit) is masked.
    """
    m = len(pos)
    neg = sampler.sample((negatives,)).to(pos.device)  # (K,)
    picked = pos[torch.randint(0, m, (min(in_batch, m),), device=pos.device)] if in_batch else pos[:0]  # (I,)
    cand = torch.cat([neg, picked])  # (K + I,)
    emb_pos, bias_pos = _rows(model, pos)  # (M, D), (M,) or None
    s_pos = (h * emb_pos).sum(-1, keepdim=True)  # (M, 1)
    s_pos = adjusted(s_pos if bias_pos is None else s_pos + bias_pos.unsqueeze(1), pos.unsqueeze(1))
    s_cand = adjusted(_scores(model, h, cand), cand)  # (M, K + I)
    logits = torch.cat([s_pos, s_cand], dim=1)  # (M, 1 + K + I)
    if logq:
        log_q = _log_expected_count(sampler, negatives, pos, picked, torch.cat([pos, cand]))  # (M + K + I,)
        logits = logits - torch.cat([log_q[:m].unsqueeze(1), log_q[m:].expand(m, -1)], dim=1)
    hit = torch.cat([torch.zeros(m, 1, dtype=torch.bool, device=pos.device), cand.unsqueeze(0) == pos.unsqueeze(1)], 1)
    return F.cross_entropy(logits.masked_fill(hit, -1e9), torch.zeros_like(pos), reduction=reduction)


def _log_expected_count(
    sampler: NegativeSampler, negatives: int, pos: torch.Tensor, picked: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """log(K q(c) + I p(c)) for the columns `cols`, p(c) the share of c among the batch targets
    `pos` (the distribution `picked` was drawn from). Sorting the M targets keeps it O(M log M)."""
    expected = negatives * sampler.probs.to(cols.device)[cols]
    if len(picked):
        ordered = pos.sort().values
        share = (torch.searchsorted(ordered, cols, right=True) - torch.searchsorted(ordered, cols)).float() / len(pos)
        expected = expected + len(picked) * share
    return expected.log()
