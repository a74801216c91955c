"""Pretraining losses, kept apart from the model (open_clip style) so they can be tested on their own.

The contrastive loss takes `rank` / `world_size` explicitly. Under torch.distributed, features are all-gathered *with
gradient* and each rank computes the loss of its own rows against the global batch ("local loss"): averaged over ranks
by DDP, this gives the same loss and gradients as one process holding the whole batch.

The fused projection + cross-entropy of the token objectives (MLM, LM) needs no `(N, V)` logit matrix: rows are
projected onto the vocabulary and scored a chunk at a time, with their gradients computed on the spot.

The sigmoid loss (SigLIP) needs no global logit matrix: each rank scores its images against its own texts, then passes
text features to its neighbours around a ring (both directions at once), so every image meets every text with memory
for two local blocks only.
"""

import torch
import torch.distributed as dist
from torch import nn


__all__ = [
    "contrastive_loss",
    "contrastive_loss_and_logits",
    "distilled_contrastive_loss",
    "sigmoid_loss",
    "sigmoid_loss_and_logits",
    "next_token_targets",
    "token_cross_entropy",
    "fused_linear_cross_entropy",
    "gather_features",
    "gather_padded",
    "pad_length",
    "distributed_info",
    "itm_loss",
    "causal_lm_loss",
    "sample_hard_negatives",
]


def distributed_info() -> tuple[int, int]:
    """`(rank, world_size)` of the default process group, `(0, 1)` outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(features: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """All-gathers `(B, ...)` features from every rank into `(world_size * B, ...)`, keeping the gradient path to every
    rank's features (torch.distributed.nn's all_gather sums the incoming gradients back onto their owners)."""
    if world_size == 1:
        return features
    import torch.distributed.nn.functional as dist_nn

    gathered = dist_nn.all_gather(features.contiguous())
    return torch.cat(gathered, dim=0)


def pad_length(states: torch.Tensor, length: int, value: float = 0) -> torch.Tensor:
    """`(N, L, ...)` -> `(N, length, ...)`, padding dim 1 with `value` (sequences of different ranks or batches made
    one length before they are concatenated)."""
    pad = length - states.shape[1]
    return nn.functional.pad(states, (0, 0) * (states.ndim - 2) + (0, pad), value=value) if pad else states


def gather_padded(features: torch.Tensor, rank: int, world_size: int, pad_value: float = 0) -> torch.Tensor:
    """`gather_features` for `(B, L, ...)` sequences whose length differs between ranks (each rank's collator pads to
    its own longest text): every rank's rows are padded with `pad_value` to the longest `L` first."""
    if world_size == 1:
        return features
    length = torch.tensor([features.shape[1]], device=features.device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    features = pad_length(features, int(length), pad_value)
    if not features.requires_grad:
        return _all_gather(features)
    return gather_features(features, rank, world_size)


def contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    rank: int = 0,
    world_size: int = 1,
    ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of `contrastive_loss_and_logits` alone."""
    return contrastive_loss_and_logits(image_embeds, text_embeds, logit_scale, rank, world_size, ids)[0]


def contrastive_loss_and_logits(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    rank: int = 0,
    world_size: int = 1,
    ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE (CLIP) over L2-normalised `(B, D)` embeddings where row i of each side is a positive pair.

    Args:
        image_embeds: `(B, D)` local image embeddings.
        text_embeds: `(B, D)` local text embeddings.
        logit_scale: Scalar temperature multiplier (already exponentiated and clamped).
        rank, world_size: Position of this process; with `world_size > 1` the negatives come from every rank.
        ids: Optional `(B,)` group ids (e.g. `image_ids`). Items sharing an id are all positives of each other, with
            the target spread evenly over them (UniCL-style), instead of the impossible task of telling identical
            pairs apart. With all ids distinct this is exactly the CLIP loss.

    Returns:
        `(loss, local_logits_per_image)`: the scalar loss and the `(B, B)` block of this rank's images against its own
        texts, read out of the global logits (the similarity is computed once, for the loss and for its callers, e.g.
        hard-negative mining).
    """
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"contrastive_loss needs paired embeddings; got image {tuple(image_embeds.shape)} and text "
            f"{tuple(text_embeds.shape)}."
        )
    all_image = gather_features(image_embeds, rank, world_size)  # (W*B, D)
    all_text = gather_features(text_embeds, rank, world_size)
    logits_per_image = logit_scale * image_embeds @ all_text.t()  # (B, W*B)
    logits_per_text = logit_scale * text_embeds @ all_image.t()
    batch = image_embeds.shape[0]
    local = logits_per_image[:, rank * batch : (rank + 1) * batch]  # (B, B): this rank's own texts
    if ids is None:
        labels = torch.arange(batch, device=image_embeds.device) + rank * batch
        loss = 0.5 * (
            nn.functional.cross_entropy(logits_per_image, labels)
            + nn.functional.cross_entropy(logits_per_text, labels)
        )
        return loss, local
    all_ids = _gather_ids(ids, world_size)  # (W*B,)
    targets = (ids[:, None] == all_ids[None, :]).to(logits_per_image.dtype)  # (B, W*B), each row has >= 1 positive
    targets = targets / targets.sum(dim=1, keepdim=True)
    loss = 0.5 * (
        nn.functional.cross_entropy(logits_per_image, targets) + nn.functional.cross_entropy(logits_per_text, targets)
    )
    return loss, local


def distilled_contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    momentum_image_embeds: torch.Tensor,
    momentum_text_embeds: torch.Tensor,
    queue_image_embeds: torch.Tensor,
    queue_text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    alpha: float,
    rank: int = 0,
    world_size: int = 1,
    ids: torch.Tensor | None = None,
    queue_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE with momentum distillation and a feature queue (ALBEF, Li et al. 2021, eq. 2-3; MoCo's queue).

    Each student embedding is scored against a bank of teacher (momentum-encoder) features of the other modality:
    the global batch's, then the queue of past batches'. The targets mix the teacher's own softmax over the same bank
    with the hard targets: `alpha * softmax(teacher logits) + (1 - alpha) * hard`, so noisy web captions are not forced
    to a one-hot label. With `alpha = 0`, an empty queue and a teacher equal to the student this is the CLIP loss of
    `contrastive_loss_and_logits` (the value; the gradient only reaches the student side of each direction, as ALBEF).

    Args:
        image_embeds, text_embeds: `(B, D)` local L2-normalised student embeddings (with gradient).
        momentum_image_embeds, momentum_text_embeds: `(B, D)` the teacher's embeddings of the same local batch (no
            gradient); all-gathered here, so the bank holds every rank's.
        queue_image_embeds, queue_text_embeds: `(Q, D)` filled queue entries only (`Q = 0` allowed): the caller
            slices off empty slots, so they can never act as negatives.
        logit_scale: Scalar temperature multiplier (already exponentiated and clamped), for student and teacher alike.
        alpha: Weight of the teacher's soft targets, in [0, 1].
        rank, world_size: Position of this process; the local rows' hard positives sit at `rank * B` in the bank.
        ids: Optional `(B,)` group ids (e.g. `image_ids`): every bank entry sharing the row's id (in the batch of any
            rank or in the queue) is a positive, with the hard target spread evenly over them, never a negative.
        queue_ids: `(Q,)` ids of the queue entries, compared with `ids` (ignored without `ids`: distinct items are
            never positives of a queue entry then).

    Returns:
        `(loss, local_logits_per_image)`: the scalar loss and the `(B, B)` student image-to-text logits of the local
        batch (student on both sides, as the model reports them; they feed ITM hard-negative mining).
    """
    if image_embeds.shape != text_embeds.shape or momentum_image_embeds.shape != image_embeds.shape:
        raise ValueError(
            f"distilled_contrastive_loss needs paired embeddings of one shape; got image {tuple(image_embeds.shape)}, "
            f"text {tuple(text_embeds.shape)}, momentum image {tuple(momentum_image_embeds.shape)}."
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distilled_contrastive_loss: alpha must be in [0, 1], got {alpha}.")
    batch, dtype = image_embeds.shape[0], image_embeds.dtype
    gather = _all_gather if world_size > 1 else (lambda tensor: tensor)
    with torch.no_grad():
        # The bank: every rank's momentum features, then the queue. `(W*B + Q, D)`
        bank_image = torch.cat([gather(momentum_image_embeds.detach()), queue_image_embeds]).to(dtype)
        bank_text = torch.cat([gather(momentum_text_embeds.detach()), queue_text_embeds]).to(dtype)
        if ids is None:
            # Only row i of this rank with bank entry rank * B + i; queue entries are always negatives.
            hard = torch.zeros(batch, bank_text.shape[0], device=image_embeds.device, dtype=dtype)
            rows = torch.arange(batch, device=image_embeds.device)
            hard[rows, rows + rank * batch] = 1.0
        else:
            bank_ids = gather(ids)  # (W*B,)
            if queue_ids is not None:
                bank_ids = torch.cat([bank_ids, queue_ids.to(bank_ids.dtype)])
            hard = nn.functional.pad(
                (ids[:, None] == bank_ids[None, :]).to(dtype), (0, bank_text.shape[0] - bank_ids.shape[0])
            )  # (B, W*B + Q): each row matches at least its own batch entry
            hard = hard / hard.sum(dim=1, keepdim=True)
        scale = logit_scale.detach()
        soft_i2t = torch.softmax(scale * momentum_image_embeds.to(dtype) @ bank_text.t(), dim=1)
        soft_t2i = torch.softmax(scale * momentum_text_embeds.to(dtype) @ bank_image.t(), dim=1)
        targets_i2t = alpha * soft_i2t + (1.0 - alpha) * hard
        targets_t2i = alpha * soft_t2i + (1.0 - alpha) * hard
    logits_per_image = logit_scale * image_embeds @ bank_text.t()  # (B, W*B + Q)
    logits_per_text = logit_scale * text_embeds @ bank_image.t()
    loss = 0.5 * (
        nn.functional.cross_entropy(logits_per_image, targets_i2t)
        + nn.functional.cross_entropy(logits_per_text, targets_t2i)
    )
    return loss, logit_scale * image_embeds @ text_embeds.t()


def _gather_ids(ids: torch.Tensor, world_size: int) -> torch.Tensor:
    return ids if world_size == 1 else _all_gather(ids)


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Plain (gradient-free) all-gather along dim 0."""
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered)


def sigmoid_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    rank: int = 0,
    world_size: int = 1,
    ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of `sigmoid_loss_and_logits` alone."""
    return sigmoid_loss_and_logits(image_embeds, text_embeds, logit_scale, logit_bias, rank, world_size, ids)[0]


def sigmoid_loss_and_logits(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    rank: int = 0,
    world_size: int = 1,
    ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise sigmoid loss (SigLIP, Zhai et al. 2023, eq. 1): every image-text pair is an independent binary
    problem, `-log sigmoid(z_ij * (t * x_i . y_j + b))` with `z_ij = 1` for positives and -1 otherwise, summed over
    the global batch and divided by the local batch size (so DDP's mean over ranks equals one process's loss).

    Across ranks the text features travel around a ring with gradient (each block's gradient returns to its owner),
    both directions at once: `ceil((W - 1) / 2)` exchange steps, never a `(B, W*B)` logit matrix.

    Args:
        image_embeds: `(B, D)` local L2-normalised image embeddings.
        text_embeds: `(B, D)` local L2-normalised text embeddings.
        logit_scale: Scalar temperature multiplier `t` (already exponentiated and clamped).
        logit_bias: Scalar bias `b` (SigLIP initialises it at -10 so that the many negatives start near 0 loss).
        rank, world_size: Position of this process; with `world_size > 1` every rank's texts are scored.
        ids: Optional `(B,)` group ids (e.g. `image_ids`): items sharing an id are positives of each other, on any
            rank. `None`: only row i with text i.

    Returns:
        `(loss, local_logits_per_image)`: the scalar loss and the `(B, B)` logits of this rank's images against its own
        texts (they also feed hard-negative mining).
    """
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"sigmoid_loss needs paired embeddings; got image {tuple(image_embeds.shape)} and text "
            f"{tuple(text_embeds.shape)}."
        )
    batch = image_embeds.shape[0]
    if ids is None:
        # Distinct ids across ranks: the rank offset keeps another rank's row i from matching ours.
        ids = torch.arange(batch, device=image_embeds.device) + rank * batch

    def block_loss(texts: torch.Tensor, text_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logit_scale * image_embeds @ texts.t() + logit_bias  # (B, B_other)
        signs = 2.0 * (ids[:, None] == text_ids[None, :]).to(logits.dtype) - 1.0  # +1 positive, -1 negative
        return -nn.functional.logsigmoid(signs * logits).sum() / batch, logits

    loss, local = block_loss(text_embeds, ids)
    if world_size == 1:
        return loss, local
    left, right = (rank - 1) % world_size, (rank + 1) % world_size
    # Two chains: one carries texts rightwards (we receive rank-1, rank-2, ...), the other leftwards (rank+1, ...).
    to_right = to_left = text_embeds
    ids_to_right = ids_to_left = ids
    remaining = world_size - 1
    while remaining > 0:
        if remaining >= 2:
            from_left, from_right = _RingExchange.apply(left, right, to_left, to_right)
            ids_from_left, ids_from_right = _exchange_ids(left, right, ids_to_left, ids_to_right)
            for texts, text_ids in ((from_left, ids_from_left), (from_right, ids_from_right)):
                loss = loss + block_loss(texts, text_ids)[0]
            to_right, to_left = from_left, from_right
            ids_to_right, ids_to_left = ids_from_left, ids_from_right
            remaining -= 2
        else:
            # One block left (an even world size): only the rightward chain moves.
            from_left = _RingShift.apply(left, right, to_right)
            ids_from_left = _exchange_ids(left, right, None, ids_to_right)[0]
            loss = loss + block_loss(from_left, ids_from_left)[0]
            remaining -= 1
    return loss, local


def _p2p(sends: list[tuple[torch.Tensor, int]], recvs: list[tuple[torch.Tensor, int]]) -> None:
    """Posts every send and receive at once and waits for all (no ordering deadlock around the ring). Tags tell two
    messages between the same pair of ranks apart (world size 2: left and right are the same rank)."""
    ops = [dist.P2POp(dist.isend, tensor.contiguous(), peer, tag=tag) for tag, (tensor, peer) in enumerate(sends)]
    ops += [dist.P2POp(dist.irecv, tensor, peer, tag=tag) for tag, (tensor, peer) in enumerate(recvs)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()


def _exchange_ids(
    left: int, right: int, to_left: torch.Tensor | None, to_right: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Moves id vectors along the ring like the features: `to_right` to the right neighbour (we get the left's), and
    `to_left` to the left neighbour when given. Returns `(from_left, from_right)`."""
    from_left = torch.empty_like(to_right)
    if to_left is None:
        _p2p([(to_right, right)], [(from_left, left)])
        return from_left, None
    from_right = torch.empty_like(to_left)
    # Tag 0 travels rightwards, tag 1 leftwards, so a receive never takes the other direction's message.
    _p2p([(to_right, right), (to_left, left)], [(from_left, left), (from_right, right)])
    return from_left, from_right


class _RingShift(torch.autograd.Function):
    """Sends a tensor to the right neighbour and returns the left neighbour's; the gradient goes back leftwards, to
    the tensor's owner."""

    @staticmethod
    def forward(ctx, left: int, right: int, to_right: torch.Tensor) -> torch.Tensor:
        ctx.left, ctx.right = left, right
        from_left = torch.empty_like(to_right)
        _p2p([(to_right, right)], [(from_left, left)])
        return from_left

    @staticmethod
    def backward(ctx, grad_from_left: torch.Tensor):
        grad_to_right = torch.empty_like(grad_from_left)
        _p2p([(grad_from_left, ctx.left)], [(grad_to_right, ctx.right)])
        return None, None, grad_to_right


class _RingExchange(torch.autograd.Function):
    """Both directions at once: `to_right` goes right and `to_left` left; returns `(from_left, from_right)`. The
    backward is the same exchange applied to the gradients, each returning to the rank it came from."""

    @staticmethod
    def forward(ctx, left: int, right: int, to_left: torch.Tensor, to_right: torch.Tensor):
        ctx.left, ctx.right = left, right
        from_left, from_right = torch.empty_like(to_right), torch.empty_like(to_left)
        _p2p([(to_right, right), (to_left, left)], [(from_left, left), (from_right, right)])
        return from_left, from_right

    @staticmethod
    def backward(ctx, grad_from_left: torch.Tensor, grad_from_right: torch.Tensor):
        # What came from the left goes back left, and the left neighbour returns the gradient of our `to_left`.
        grad_to_left, grad_to_right = torch.empty_like(grad_from_right), torch.empty_like(grad_from_left)
        _p2p(
            [(grad_from_left.contiguous(), ctx.left), (grad_from_right.contiguous(), ctx.right)],
            [(grad_to_right, ctx.right), (grad_to_left, ctx.left)],
        )
        return None, None, grad_to_left, grad_to_right


@torch.no_grad()
def sample_hard_negatives(
    similarity: torch.Tensor,
    image_ids: torch.Tensor | None,
    generator: torch.Generator | None = None,
    sample: bool = True,
    similarity_t2i: torch.Tensor | None = None,
    column_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ALBEF hard-negative mining: for every row pick a negative column with probability softmax(similarity),
    never a column that shares the row's `image_id` (so duplicate captions of one image are never negatives).

    Args:
        similarity: `(B, C)` image-to-text ITC logits: the local batch's images against the candidate texts (the local
            batch, `C = B`, or every rank's, `C = W * B`).
        image_ids: `(B,)` ids of the rows; rows and columns with equal ids are positives of each other. `None` means
            all distinct (with square `similarity` only).
        generator: Random generator of the draw.
        sample: Draw from softmax(similarity) (training); `False` takes the most similar valid column instead, a
            deterministic choice for evaluation (ties go to the lowest index).
        similarity_t2i: `(B, C)` text-to-image logits of the local texts against the candidate images; default
            `similarity.t()` (square case).
        column_ids: `(C,)` ids of the candidates; default `image_ids` (square case).

    Returns:
        `(neg_text_for_image, neg_image_for_text)`: two `(B,)` index tensors into the candidates; -1 where a row has no
        valid negative.
    """
    batch = similarity.shape[0]
    if image_ids is None:
        image_ids = torch.arange(batch, device=similarity.device)
    if column_ids is None:
        column_ids = image_ids
    if similarity_t2i is None:
        similarity_t2i = similarity.t()
    same = image_ids[:, None] == column_ids[None, :]  # (B, C)
    picks = []
    for sim in (similarity, similarity_t2i):
        weights = torch.softmax(sim.float(), dim=1).masked_fill(same, 0.0)
        valid = weights.sum(1) > 0
        # Rows without any valid negative get uniform dummy weights; their pick is discarded below.
        weights = torch.where(valid[:, None], weights, torch.ones_like(weights))
        if sample:
            pick = torch.multinomial(weights, 1, generator=generator).squeeze(1)
        else:
            pick = weights.argmax(dim=1)
        picks.append(torch.where(valid, pick, torch.full_like(pick, -1)))
    return picks[0], picks[1]


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary image-text matching cross-entropy over `(N, 2)` logits; label 1 = matched pair."""
    return nn.functional.cross_entropy(logits, labels)


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """`(B, L)` targets of each position: position t predicts `labels[t + 1]`, the last position nothing (-100).
    Shifting the labels, not the logits (as transformers' ForCausalLMLoss), lets `(B, L, V)` logits be read in place."""
    return nn.functional.pad(labels[:, 1:], (0, 1), value=-100)


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `(N, V)` logits against `(N,)` token ids, -100 ignored; 0 when nothing is scored. The sum
    over scored tokens divided by their count (at least 1) needs no data-dependent branch (no host sync)."""
    total = nn.functional.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")
    return total / (targets != -100).sum().clamp(min=1)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of `(B, L, V)` logits: position t predicts `labels[t + 1]`; -100 is ignored."""
    return token_cross_entropy(logits.reshape(-1, logits.shape[-1]), next_token_targets(labels).reshape(-1))


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk_rows: int,
    ignore_index: int = -100,
) -> torch.Tensor:
    """`token_cross_entropy(hidden @ weight.T + bias, targets)` without ever holding the `(N, V)` logits or their
    gradient whole: rows are projected and scored `chunk_rows` at a time (the idea of Liger-Kernel's fused linear
    cross-entropy, in plain torch).

    With gradient, each chunk's gradient w.r.t. `hidden`, `weight` and `bias` is computed in the forward, right after
    its logits, and the backward only scales the stored `(N, H)`, `(V, H)` and `(V,)` gradients by the incoming one (the
    price: they are computed even if no backward follows). Without gradient (eval, `torch.no_grad`) only the loss is
    computed, still chunked. A `weight` shared with the word embeddings (tied) gets its gradient as any other use of it.

    Args:
        hidden: `(N, H)` states of the scored rows.
        weight: `(V, H)` vocabulary projection (`nn.Linear.weight`).
        bias: `(V,)` its bias, or `None`.
        targets: `(N,)` token ids; `ignore_index` rows are not scored.
        chunk_rows: Rows per chunk: peak memory grows with `chunk_rows * V`, the number of matmuls with
            `N / chunk_rows`.
        ignore_index: Target value of rows that are not scored.

    Returns:
        The scalar mean over scored rows (their sum divided by their count, at least 1: 0 when nothing is scored, as
        `token_cross_entropy`), computed in at least float32 whatever the input dtypes and autocast.
    """
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"fused_linear_cross_entropy: chunk_rows must be a positive integer, got {chunk_rows!r}.")
    if hidden.ndim != 2 or targets.shape != hidden.shape[:1] or weight.ndim != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"fused_linear_cross_entropy needs hidden (N, H), weight (V, H) and targets (N,); got "
            f"{tuple(hidden.shape)}, {tuple(weight.shape)} and {tuple(targets.shape)}."
        )
    tensors = (hidden, weight) if bias is None else (hidden, weight, bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _FusedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_rows, ignore_index)
    return _chunked_cross_entropy(hidden, weight, bias, targets, chunk_rows, ignore_index)[0]


def _chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk_rows: int,
    ignore_index: int,
    needs_grad: tuple[bool, bool, bool] = (False, False, False),
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """`(loss, grad_hidden, grad_weight, grad_bias)` of `fused_linear_cross_entropy`, each gradient `None` unless
    asked for by `needs_grad`, in the compute dtype."""
    # Autocast would run the matmuls in half precision: the logits and their softmax are computed in at least float32
    # instead (as `token_cross_entropy` upcasts the logits), with explicit casts.
    dtype = torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)
    with torch.autocast(hidden.device.type, enabled=False):
        w = weight.to(dtype)  # (V, H)
        b = bias.to(dtype) if bias is not None else None
        valid = targets != ignore_index  # (N,)
        count = valid.sum().clamp(min=1)  # a tensor: no host sync
        # Each scored row's share of the mean; ignored rows get 0, which also zeroes their gradient.
        row_scale = valid.to(dtype) / count  # (N,)
        safe_targets = targets.masked_fill(~valid, 0)  # gather needs an index in [0, V) on every row
        total = hidden.new_zeros((), dtype=dtype)
        grad_hidden = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) if needs_grad[0] else None
        grad_weight = torch.zeros_like(w) if needs_grad[1] else None
        grad_bias = torch.zeros_like(b) if needs_grad[2] and b is not None else None
        for start in range(0, hidden.shape[0], chunk_rows):
            stop = min(start + chunk_rows, hidden.shape[0])
            h = hidden[start:stop].to(dtype)  # (c, H)
            rows = safe_targets[start:stop]
            logits = h @ w.t() if b is None else torch.addmm(b, h, w.t())  # (c, V): the only (rows, V) buffer
            target_logit = logits.gather(1, rows[:, None]).squeeze(1)  # (c,)
            # log-sum-exp by hand, in place, so the buffer becomes exp(z - max) and then the softmax.
            row_max = logits.amax(dim=1, keepdim=True)  # (c, 1)
            probs = logits.sub_(row_max).exp_()
            sum_exp = probs.sum(dim=1, keepdim=True)
            lse = (sum_exp.log() + row_max).squeeze(1)  # (c,)
            total = total + ((lse - target_logit) * valid[start:stop]).sum()
            if not any(needs_grad):
                continue
            # d(mean loss)/d(logits) = (softmax - onehot(target)) * row_scale: scored rows only, divided by their count.
            probs.div_(sum_exp)
            probs[torch.arange(stop - start, device=probs.device), rows] -= 1.0
            grad_logits = probs.mul_(row_scale[start:stop, None])  # (c, V)
            if grad_hidden is not None:
                torch.mm(grad_logits, w, out=grad_hidden[start:stop])  # (c, H)
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.t(), h)  # (V, H)
            if grad_bias is not None:
                grad_bias += grad_logits.sum(dim=0)  # (V,)
        return total / count, grad_hidden, grad_weight, grad_bias


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """The forward computes the loss and, chunk by chunk, its gradients; the backward scales them by the incoming
    gradient (a scalar) and returns them in the dtypes of the inputs."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows, ignore_index):
        needs_grad = tuple(ctx.needs_input_grad[:3])  # (hidden, weight, bias): frozen parts get none
        loss, grad_hidden, grad_weight, grad_bias = _chunked_cross_entropy(
            hidden, weight, bias, targets, chunk_rows, ignore_index, needs_grad
        )
        # Stored in the inputs' dtypes: a bf16 model keeps bf16 gradients (accumulated in float32 above).
        grads = [
            None if grad is None else grad.to(tensor.dtype)
            for grad, tensor in zip((grad_hidden, grad_weight, grad_bias), (hidden, weight, bias))
        ]
        ctx.has = [grad is not None for grad in grads]
        ctx.save_for_backward(*[grad for grad in grads if grad is not None])
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        saved = iter(ctx.saved_tensors)
        grads = []
        for has in ctx.has:
            grad = next(saved) if has else None
            grads.append(None if grad is None else grad * grad_loss.to(grad.dtype))
        return *grads, None, None, None
