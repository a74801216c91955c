"""Pretraining losses, kept apart from the model (open_clip style) so they can be tested on their own.

The contrastive loss takes `rank` / `world_size` explicitly. Under torch.distributed, features are all-gathered *with
gradient* and each rank computes the loss of its own rows against the global batch ("local loss"): averaged over ranks
by DDP, this gives the same loss and gradients as one process holding the whole batch.
"""

import torch
import torch.distributed as dist
from torch import nn


__all__ = [
    "contrastive_loss",
    "contrastive_loss_and_logits",
    "next_token_targets",
    "token_cross_entropy",
    "gather_features",
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
    """All-gathers `(B, D)` features from every rank into `(world_size * B, D)`, keeping the gradient path to every
    rank's features (torch.distributed.nn's all_gather sums the incoming gradients back onto their owners)."""
    if world_size == 1:
        return features
    import torch.distributed.nn.functional as dist_nn

    gathered = dist_nn.all_gather(features)
    return torch.cat(gathered, dim=0)


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


def _gather_ids(ids: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size == 1:
        return ids
    gathered = [torch.empty_like(ids) for _ in range(world_size)]
    dist.all_gather(gathered, ids.contiguous())
    return torch.cat(gathered)


@torch.no_grad()
def sample_hard_negatives(
    similarity: torch.Tensor,
    image_ids: torch.Tensor | None,
    generator: torch.Generator | None = None,
    sample: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ALBEF hard-negative mining: for every row pick a negative column with probability softmax(similarity),
    never a column that shares the row's `image_id` (so duplicate captions of one image are never negatives).

    Args:
        similarity: `(B, B)` image-to-text ITC logits of the local batch.
        image_ids: `(B,)` ids; rows with equal ids are positives of each other. `None` means all distinct.
        generator: Random generator of the draw.
        sample: Draw from softmax(similarity) (training); `False` takes the most similar valid column instead, a
            deterministic choice for evaluation (ties go to the lowest index).

    Returns:
        `(neg_text_for_image, neg_image_for_text)`: two `(B,)` index tensors; -1 where a row has no valid negative.
    """
    batch = similarity.shape[0]
    if image_ids is None:
        image_ids = torch.arange(batch, device=similarity.device)
    same = image_ids[:, None] == image_ids[None, :]  # (B, B)
    picks = []
    for sim in (similarity, similarity.t()):
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
