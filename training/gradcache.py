"""Gradient caching for ITC (GradCache, Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup"): k micro-batches of b pairs train as one batch of k·b, with all k·b negatives, while only one
micro-batch's activation graph is alive at a time.

One step (`gradcache_backward`):

1. **Embed without graph.** Each micro-batch runs the full forward under `torch.no_grad()`; the global RNG state
   (CPU, and the accelerator's) is recorded first. Only the `(b, projection_dim)` ITC embeddings and the number of items
   each non-ITC loss averages over are kept.
2. **Loss over the cache.** The ITC loss of the config (`MMModel.itc_loss_and_logits`: InfoNCE or sigmoid, gathered
   across torch.distributed ranks by itself) over the k·b cached embeddings, turned into leaves; `torch.autograd.grad`
   gives the gradient of every cached embedding and of the parameters the loss reads directly (the temperature, the
   sigmoid bias).
3. **Replay with graph.** Each micro-batch runs again with its recorded RNG state restored, so dropout and FLIP masks
   draw exactly what step 1 drew, and backpropagates the surrogate
   `<image_embeds, g_image> + <text_embeds, g_text> + sum_obj w_obj * (n_obj_i / n_obj) * loss_obj_i`: the cached
   gradients, plus the micro-batch's non-ITC losses weighted by its share of the items they average over (masked
   tokens for MLM, target tokens for LM, pairs for ITM), which makes the sum the k·b batch's token mean. The
   micro-batch's own b·b ITC loss is not in the surrogate. The last surrogate also carries `<p, g_p>` for the
   temperature and bias, so each parameter gets its gradient in a backward that DDP synchronises.

Peak memory is one micro-batch's graph plus the k·b embeddings; the price is a second forward of every micro-batch.

With Trainer, `MMTrainer(itc_accumulation_steps=k)` runs this as its `training_step`. Trainer's own
`gradient_accumulation_steps` (GA) is orthogonal: it accumulates whole Trainer batches of k·b rows, each with its own
k·b negatives, before one optimizer step of k·b·GA rows (per device).

ITM: its hard negatives are mined over all k·b rows, from the cached k·b similarity (`sample_hard_negatives`, ALBEF;
never between items sharing an `image_id`), after step 1. In step 3 each micro-batch gets its pairs and the inputs of
the partners that sit in other micro-batches (`MMITMNegatives`), which the model encodes with its towers (with
gradient) and fuses like its own rows: with dropout 0 the ITM loss and gradients are those of one k·b batch. FLIP
masks are then drawn once for the whole batch, so a partner image keeps the patches it had in its own micro-batch.
Under torch.distributed the mining spans each rank's k·b rows (not every rank's, as a plain forward's does).
Under DDP only the last micro-batch's backward synchronises gradients; DeepSpeed and DataParallel are refused by
`MMTrainer`; FSDP is untested.
"""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from modeling_mm import MMITMNegatives
from modeling_mm.losses import next_token_targets, sample_hard_negatives

from .distributed import unwrap_pretraining_model


__all__ = ["GradCacheOutput", "RNGState", "check_itc_accumulation", "gradcache_backward", "split_micro_batches"]

# The output field whose first dimension counts the items each non-ITC loss is a mean over (the logits are `None`
# under `config.loss_chunk_size`: `_num_items` then counts the targets in the inputs).
_ITEMS_OF = {"itm": "itm_labels", "mlm": "mlm_logits", "lm": "lm_logits"}


@dataclass
class GradCacheOutput(ModelOutput):
    """
    What one gradient-cached step reports (all detached, before any gradient-accumulation scaling).

    Args:
        loss (`torch.FloatTensor` of shape `()`): The weighted total, as one forward over the k·b rows reports it.
        itc_loss (`torch.FloatTensor` of shape `()`): The ITC loss over all k·b pairs.
        itm_loss, mlm_loss, lm_loss (`torch.FloatTensor` of shape `()`): Each objective's mean over the k·b rows.
    """

    loss: torch.FloatTensor | None = None
    itc_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None


@dataclass
class RNGState:
    """The global RNG state a forward draws from: torch's CPU generator and, on an accelerator, its current device's."""

    cpu: torch.Tensor
    device_type: str | None = None
    device: torch.Tensor | None = None

    @classmethod
    def capture(cls, device: torch.device) -> "RNGState":
        if device.type == "cpu":
            return cls(torch.get_rng_state())
        return cls(torch.get_rng_state(), device.type, torch.get_device_module(device.type).get_rng_state())

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.device_type is not None:
            torch.get_device_module(self.device_type).set_rng_state(self.device)


def check_itc_accumulation(steps: int, batch_size: int | None = None, config=None) -> None:
    """Raises a `ValueError` naming `itc_accumulation_steps` when it cannot work: not a positive integer, not dividing
    the per-device batch, or a model without ITC embeddings to cache.

    Args:
        steps (`int`): The number of micro-batches per batch.
        batch_size (`int`, *optional*): The per-device train batch size.
        config (`MMConfig`, *optional*): The model's config.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"itc_accumulation_steps must be an integer >= 1, got {steps!r}.")
    if steps == 1:
        return
    if batch_size is not None and batch_size % steps != 0:
        raise ValueError(
            f"itc_accumulation_steps={steps} must divide the per-device train batch size ({batch_size}): each batch "
            f"of {batch_size} rows is split into {steps} equal micro-batches."
        )
    if config is not None and "itc" not in getattr(config, "objectives", ()):
        raise ValueError(
            f"itc_accumulation_steps={steps} caches ITC embeddings, but the model's objectives "
            f"{list(getattr(config, 'objectives', []))} have no 'itc' (late or hybrid fusion)."
        )


def split_micro_batches(inputs: dict, steps: int) -> list[dict]:
    """Splits every tensor whose first dimension is the batch into `steps` consecutive micro-batches (equal when
    `steps` divides the batch, else differing by one row; a batch shorter than `steps` gives one row each); other
    values are passed to every micro-batch unchanged."""
    batch = inputs["input_ids"].shape[0]
    parts = min(steps, batch)
    split = {
        key: value.tensor_split(parts) if torch.is_tensor(value) and value.ndim and value.shape[0] == batch else None
        for key, value in inputs.items()
    }
    return [{key: inputs[key] if split[key] is None else split[key][i] for key in inputs} for i in range(parts)]


def _pretraining_model(model: torch.nn.Module) -> torch.nn.Module:
    """The `MMForPreTraining` under DDP / FSDP / peft wrappers."""
    inner = unwrap_pretraining_model(model)
    if inner is None:
        raise ValueError(f"itc_accumulation_steps > 1 needs an MMForPreTraining model, got {type(model).__name__}.")
    return inner


def gradcache_backward(
    model: torch.nn.Module,
    inputs: dict,
    steps: int,
    loss_scale: float = 1.0,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> GradCacheOutput:
    """One gradient-cached forward and backward of `inputs` (a batch of k·b rows) in `steps` = k micro-batches: the
    parameters' `.grad` receive `loss_scale` times the gradient of one forward over all k·b rows (ITM: with dropout 0,
    see the module docstring). The model must be in training mode for dropout and FLIP to apply, as in any training step.

    Args:
        model (`torch.nn.Module`): An `MMForPreTraining` with the `itc` objective, possibly wrapped (DDP, FSDP, peft).
        inputs (`dict`): The batch, as the collator gives it (`input_ids`, `pixel_values`, `image_ids`, ...).
        steps (`int`): k, the number of micro-batches.
        loss_scale (`float`): Multiplies every gradient (e.g. `1 / gradient_accumulation_steps`).
        backward (`Callable`): Runs the backward of a scalar (`accelerator.backward` under Trainer).
        no_sync (`Callable`): A context in which a backward must not synchronise gradients across processes (DDP's
            `no_sync`); every backward but the last runs in it.
        autocast (`Callable`): The mixed-precision context of the forwards (Trainer's `compute_loss_context_manager`).
    """
    check_itc_accumulation(steps)
    inner = _pretraining_model(model)
    config = inner.config
    check_itc_accumulation(steps, config=config)
    itm = "itm" in config.objectives
    if itm and "image_keep_indices" not in inputs:
        # FLIP masks of the whole batch at once: a partner image is encoded in another micro-batch's replay.
        keep = inner._vision_keep_indices(_pixels(inputs), None)
        if keep is not None:
            inputs = {**inputs, "image_keep_indices": keep}
    micro_batches = split_micro_batches(inputs, steps)
    device = inputs["input_ids"].device

    # 1. Embed every micro-batch without graph, remembering the RNG state each forward started from. (With ITM,
    # pass 1 fuses the positives only: its negatives are chosen below, over all k·b.)
    rng_states, image_cache, text_cache, items = [], [], [], []
    with torch.no_grad():
        for micro in micro_batches:
            rng_states.append(RNGState.capture(device))
            extra = {}
            if itm:
                none = torch.full_like(micro["input_ids"][:, 0], -1)
                extra["itm_negatives"] = MMITMNegatives(text_for_image=none, image_for_text=none)
            with autocast():
                out = model(**micro, **extra)
            image_cache.append(out.image_embeds)  # (b, P)
            text_cache.append(out.text_embeds)  # (b, P)
            # How many items (pairs, tokens) each non-ITC loss of this micro-batch averages over.
            items.append({obj: _num_items(obj, out, micro) for obj in _ITEMS_OF if f"{obj}_loss" in out})
            del out
    sizes = [e.shape[0] for e in image_cache]
    negatives = None
    if itm:
        # ITM hard negatives over all k·b rows, from the cached similarity (ALBEF; sampled in training).
        with torch.no_grad():
            similarity = inner.mm.similarity(torch.cat(image_cache), torch.cat(text_cache))  # (k·b, k·b)
            negatives = sample_hard_negatives(similarity, inputs.get("image_ids"), sample=inner.training)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        for i, (start, size) in enumerate(zip(starts, sizes)):
            pairs = size + sum(int((n[start : start + size] >= 0).sum()) for n in negatives)
            items[i]["itm"] = pairs
    after_pass_one = RNGState.capture(device)

    # 2. The ITC loss over all k·b cached embeddings; gradients of the embeddings and of the parameters it reads.
    images = torch.cat(image_cache).requires_grad_()  # (k·b, P), a leaf
    texts = torch.cat(text_cache).requires_grad_()
    direct = [p for p in inner.mm.parameters() if p.requires_grad]
    with autocast():
        itc_loss, _ = inner.mm.itc_loss_and_logits(images, texts, inputs.get("image_ids"))
    grads = torch.autograd.grad(config.itc_weight * loss_scale * itc_loss, [images, texts, *direct], allow_unused=True)
    image_grads, text_grads = grads[0].split(sizes), grads[1].split(sizes)
    direct_grads = [(p, g) for p, g in zip(direct, grads[2:]) if g is not None]  # the temperature (and bias)
    del images, texts, image_cache, text_cache

    # 3. Replay each micro-batch with its RNG state and backpropagate the cached gradients through it.
    totals = {obj: sum(count[obj] for count in items) for obj in items[0]}
    reported: dict[str, torch.Tensor] = {}
    for i, micro in enumerate(micro_batches):
        rng_states[i].restore()
        last = i == len(micro_batches) - 1
        extra = {}
        if negatives is not None:
            extra["itm_negatives"] = _micro_batch_negatives(inputs, negatives, starts[i], sizes[i])
        with contextlib.nullcontext() if last else no_sync():
            with autocast():
                out = model(**micro, **extra)
            surrogate = (out.image_embeds * image_grads[i]).sum() + (out.text_embeds * text_grads[i]).sum()
            for obj, total in totals.items():
                # This micro-batch's share of the k·b mean (0 when no row of the batch scores anything).
                share = items[i][obj] / total if total > 0 else 0.0
                weighted = share * out[f"{obj}_loss"]
                surrogate = surrogate + getattr(config, f"{obj}_weight") * loss_scale * weighted
                reported[obj] = reported.get(obj, 0.0) + weighted.detach()
            if last:
                surrogate = surrogate + sum((p * g).sum() for p, g in direct_grads)
            backward(surrogate)
            del out, surrogate
    # The replay consumed what pass 1 drew: leave the RNG where one pass would have.
    after_pass_one.restore()

    losses = {"itc": itc_loss.detach(), **reported}
    total = sum(getattr(config, f"{obj}_weight") * value for obj, value in losses.items())
    return GradCacheOutput(loss=total, **{f"{obj}_loss": value for obj, value in losses.items()})


def _micro_batch_negatives(
    inputs: dict, negatives: tuple[torch.LongTensor, torch.LongTensor], start: int, size: int
) -> MMITMNegatives:
    """The k·b-wide negatives of rows `[start, start + size)` as one micro-batch's `MMITMNegatives`: a partner inside
    the micro-batch is its own row, one outside becomes an appended partner row (each needed row once)."""
    stop = start + size
    local, partners = [], []
    for chosen in negatives:  # (text for each image, image for each text), global row indices or -1
        chosen = chosen[start:stop]
        inside = (chosen >= start) & (chosen < stop)
        outside = (chosen >= 0) & ~inside
        rows = torch.unique(chosen[outside])  # sorted
        index = torch.full_like(chosen, -1)
        index[inside] = chosen[inside] - start
        index[outside] = size + torch.searchsorted(rows, chosen[outside])
        local.append(index)
        partners.append(rows)
    texts, images = partners
    keep = inputs.get("image_keep_indices")
    return MMITMNegatives(
        text_for_image=local[0],
        image_for_text=local[1],
        input_ids=inputs["input_ids"][texts],
        attention_mask=inputs["attention_mask"][texts] if inputs.get("attention_mask") is not None else None,
        pixel_values=_pixels(inputs)[images],
        image_keep_indices=keep[images] if keep is not None else None,
    )


def _num_items(objective: str, out: ModelOutput, micro: dict) -> int:
    """How many items the micro-batch's `objective` loss is a mean over: the rows of its output field, or, when the
    fused loss (`config.loss_chunk_size`) returned no logits, the targets it scored: the masked tokens for MLM, the
    real next tokens of the captions for LM (as `MMForPreTraining._lm` builds them)."""
    field = out.get(_ITEMS_OF[objective])
    if field is not None:
        return field.shape[0]
    if objective == "mlm":
        return int((micro["mlm_labels"] != -100).sum())
    mask = micro.get("attention_mask")
    labels = micro["input_ids"] if mask is None else micro["input_ids"].masked_fill(mask == 0, -100)
    return int((next_token_targets(labels) != -100).sum())


def _pixels(inputs: dict) -> torch.Tensor:
    return inputs["pixel_values"] if inputs.get("pixel_values") is not None else inputs["pixel_values_videos"]
