"""`MMForPreTraining`: the pretraining objectives of the MM family (ITC, ITM with hard negatives, MLM, captioning LM,
FLIP), one method each, composed per fusion; with the data a trainer may hand it (momentum distillation's teacher
features and queue, hard negatives mined outside the model).

Co-attention fusion has what hybrid fusion has (two towers, fusion layers, a fused text `[CLS]`): wherever these docs
say "hybrid", "coattention" behaves the same.
"""

from dataclasses import dataclass

import torch
from torch import nn

from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils.generic import can_return_tuple

from .configuration_mm import CROSS_FUSIONS, MMConfig
from .losses import (
    distilled_contrastive_loss,
    distributed_info,
    fused_linear_cross_entropy,
    gather_features,
    gather_padded,
    itm_loss,
    next_token_targets,
    pad_length,
    sample_hard_negatives,
    token_cross_entropy,
)
from .modeling_mm import MMModel, MMOutput, MMPreTrainedModel, MMTextDecoder, _eager_checks, _flag, visual_input


__all__ = [
    "MMForPreTraining",
    "MMForPreTrainingOutput",
    "MMITCDistillation",
    "MMITMNegatives",
    "random_keep_indices",
]


@dataclass
class MMForPreTrainingOutput(MMOutput):
    r"""
    Output of [`MMForPreTraining`]; every objective's loss is reported next to the weighted total.

    Args:
        loss (`torch.FloatTensor` of shape `()`): Weighted sum of the objectives that ran.
        itc_loss, itm_loss, mlm_loss, lm_loss (`torch.FloatTensor` of shape `()`): Each objective's loss.
        logits_per_image (`torch.FloatTensor` of shape `(B, B)`): ITC logits of the local batch.
        image_embeds, text_embeds (`torch.FloatTensor` of shape `(B, projection_dim)`): The L2-normalised ITC
            embeddings the logits come from (late, hybrid, coattention with `itc` or `itm`); gradient caching
            (`training.gradcache`) backpropagates through them.
        itm_logits (`torch.FloatTensor` of shape `(P, 2)`): ITM scores of positives then hard negatives.
        itm_labels (`torch.LongTensor` of shape `(P,)`): 1 for matched pairs, 0 for negatives.
        mlm_logits (`torch.FloatTensor` of shape `(N_masked, V)`): MLM predictions at the masked positions, in
            row-major order of `mlm_labels != -100`; `None` with `config.loss_chunk_size` (fused loss).
        lm_logits (`torch.FloatTensor` of shape `(N_targets, V)`): Captioning predictions of every real next token
            (positions whose target is not padding), in row-major order; `None` with `config.loss_chunk_size`.
        hidden_states, attentions (`tuple(torch.FloatTensor)`): With `output_hidden_states` / `output_attentions`: the
            text stream the objectives read, i.e. the text tower over the clean text (late, hybrid; over the masked
            text when `mlm` is the only text objective) or the joint encoder over the matched pairs (early).
        text_model_output, vision_model_output (`BaseModelOutputWithPooling`): The towers' outputs (late, hybrid),
            with `output_hidden_states` / `output_attentions`.
    """

    loss: torch.FloatTensor | None = None
    itc_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    itm_labels: torch.LongTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    lm_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None


@dataclass
class MMITCDistillation:
    r"""
    What ITC momentum distillation (ALBEF) needs from outside the model, for one batch: the teacher's features and the
    feature queue. It is data, not trainer state; `training.momentum.MomentumDistillation` makes it each step.

    Args:
        momentum_image_embeds, momentum_text_embeds (`torch.FloatTensor` of shape `(B, projection_dim)`): The momentum
            encoders' L2-normalised embeddings of this batch (no gradient; full images, no FLIP mask).
        queue_image_embeds, queue_text_embeds (`torch.FloatTensor` of shape `(Q, projection_dim)`): The filled queue
            entries (`Q` may be 0), used as extra negatives.
        alpha (`float`): Weight of the teacher's soft targets, in [0, 1].
        queue_ids (`torch.LongTensor` of shape `(Q,)`, *optional*): `image_ids` of the queue entries: an entry sharing
            an id with a batch item is that item's positive, never its negative.
        queue_input_ids, queue_attention_mask (`torch.LongTensor` of shape `(Q, L_q)`, *optional*): The texts of the
            queue entries (right-padded). Given together with `queue_pixel_values`, ITM hard negatives are mined over
            `[global batch ; queue]`, not the batch alone: the queue entries picked are encoded by the towers.
        queue_pixel_values (`torch.FloatTensor` of shape `(Q, C, H, W)` or `(Q, T, C, H, W)`, *optional*): The images
            (clips) of the queue entries.
    """

    momentum_image_embeds: torch.FloatTensor
    momentum_text_embeds: torch.FloatTensor
    queue_image_embeds: torch.FloatTensor
    queue_text_embeds: torch.FloatTensor
    alpha: float
    queue_ids: torch.LongTensor | None = None
    queue_input_ids: torch.LongTensor | None = None
    queue_attention_mask: torch.LongTensor | None = None
    queue_pixel_values: torch.FloatTensor | None = None


@dataclass
class MMITMNegatives:
    r"""
    ITM hard negatives chosen outside the model, with the inputs of partners that are not in the batch: gradient
    caching (`training.gradcache`) mines them over all k micro-batches and hands each micro-batch its partners, which
    the model encodes with its towers (with gradient) and fuses as if they were batch rows.

    Indices point into `[the batch's rows ; the partners given here]`: `i < B` is batch row i, `B + j` partner j.

    Args:
        text_for_image (`torch.LongTensor` of shape `(B,)`): The hard negative text of each image; -1 for none.
        image_for_text (`torch.LongTensor` of shape `(B,)`): The hard negative image of each text; -1 for none.
        input_ids, attention_mask (`torch.LongTensor` of shape `(N_t, L')`, *optional*): The partner texts.
        pixel_values (`torch.FloatTensor` of shape `(N_i, C, H, W)` or `(N_i, T, C, H, W)`, *optional*): The partner
            images.
        image_keep_indices (`torch.LongTensor` of shape `(N_i, K)`, *optional*): FLIP patches of the partner images
            (the ones they had in their own micro-batch); in training with FLIP on and none given, drawn here.
    """

    text_for_image: torch.LongTensor
    image_for_text: torch.LongTensor
    input_ids: torch.LongTensor | None = None
    attention_mask: torch.LongTensor | None = None
    pixel_values: torch.FloatTensor | None = None
    image_keep_indices: torch.LongTensor | None = None


def random_keep_indices(
    batch: int, num_tokens: int, mask_ratio: float, device: torch.device, generator: torch.Generator | None = None
) -> torch.LongTensor:
    """FLIP masking: for each sample keep a random `round(num_tokens * (1 - mask_ratio))` (at least 1) patch indices,
    sorted so that kept patches stay in raster order. Returns `(batch, kept)`."""
    keep = max(1, round(num_tokens * (1.0 - mask_ratio)))
    noise = torch.rand(batch, num_tokens, device=device, generator=generator)
    return noise.argsort(dim=1)[:, :keep].sort(dim=1).values


class MMMLMHead(nn.Module):
    """BERT's MLM head: transform, then a vocabulary projection tied to the text word embeddings."""

    def __init__(self, hidden_size: int, vocab_size: int, hidden_act: str, layer_norm_eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act = ACT2FN[hidden_act]
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def transform(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The head up to the vocabulary projection (the states the fused loss projects itself)."""
        return self.layer_norm(self.act(self.dense(hidden_states)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


def _text_act_eps(config: MMConfig) -> tuple[str, float]:
    return getattr(config.text_config, "hidden_act", "gelu"), getattr(config.text_config, "layer_norm_eps", 1e-12)


def _check_batch(**tensors: torch.Tensor | None) -> int:
    sizes = {name: t.shape[0] for name, t in tensors.items() if t is not None}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"Batch sizes differ between inputs: {sizes}.")
    return next(iter(sizes.values()))


def _check_lm_labels(labels: torch.Tensor, input_ids: torch.Tensor, vocab_size: int, name: str = "labels") -> None:
    if labels.shape != input_ids.shape:
        raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}.")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be integer token ids (-100 to ignore), got {labels.dtype}.")
    if not _eager_checks():
        return
    bad = (labels != -100) & ((labels < 0) | (labels >= vocab_size))
    if bad.any():
        row, col = bad.nonzero()[0].tolist()
        raise ValueError(
            f"{name}[{row}, {col}] = {int(labels[row, col])} is neither -100 nor a token id in [0, {vocab_size})."
        )


class MMForPreTraining(MMPreTrainedModel):
    r"""
    MM with the pretraining objectives named in `config.objectives` (weights `config.*_weight`), one method each,
    composed in `forward` (FLAVA's shape):

    - **itc** (`_itc`): symmetric InfoNCE, features all-gathered with gradient across ranks (late, hybrid);
    - **itm** (`_itm`): image-text matching on the fused `[CLS]`, with ALBEF hard negatives drawn from the ITC
      similarity (hybrid; random negatives for early), never between items that share an `image_id`; in eval mode the
      hardest negative is taken instead of a sampled one, so evaluation is deterministic;
    - **mlm** (`_mlm`): masked language modelling on the fused text stream (early, hybrid);
    - **lm** (`_lm`): captioning with the image-conditioned causal decoder (late, hybrid).

    In hybrid fusion the ITM pairs and the masked texts go through the fusion layers in one pass.

    FLIP: in training mode, `config.image_mask_ratio` of the patches are dropped per sample (or the collator's
    `image_keep_indices` are used); in eval mode the model always sees every patch.
    """

    def __init__(self, config: MMConfig):
        super().__init__(config)
        objectives = set(config.objectives)
        # Each part exists only for the objectives that train it: ITC and hard-negative mining need the projections,
        # ITM and MLM the fusion layers, everything but `lm` the text tower (the decoder has its own embeddings).
        self.mm = MMModel(
            config,
            add_text_model=bool(objectives & {"itc", "itm", "mlm"}),
            add_projections=bool(objectives & {"itc", "itm"}),
            add_fusion_layers=bool(objectives & {"itm", "mlm"}),
        )
        text_hidden = config.text_config.hidden_size
        act, eps = _text_act_eps(config)
        tied = {}
        if "itm" in objectives:
            self.itm_head = nn.Linear(text_hidden, 2)
        if "mlm" in objectives:
            self.mlm_head = MMMLMHead(text_hidden, config.text_config.vocab_size, act, eps)
            tied["mlm_head.decoder.weight"] = "mm.text_model.embeddings.word_embeddings.weight"
        if "lm" in objectives:
            self.text_decoder = MMTextDecoder(config)
            tied["text_decoder.lm_head.weight"] = "text_decoder.embeddings.word_embeddings.weight"
        self._tied_weights_keys = tied
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        if not hasattr(self.mm, "text_model"):
            return self.text_decoder.embeddings.word_embeddings
        return self.mm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        return self.mlm_head.decoder if "mlm" in self.config.objectives else None

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.mlm_head.decoder = new_embeddings

    def resize_token_embeddings(self, new_num_tokens: int | None = None, *args, **kwargs) -> nn.Embedding:
        """Resizes the text tower (and the tied MLM decoder) and, with the `lm` objective, the captioning decoder's
        own embeddings and vocabulary projection, so that a new token id is valid for every objective."""
        embeddings = super().resize_token_embeddings(new_num_tokens, *args, **kwargs)
        if "lm" in self.config.objectives:
            decoder = self.text_decoder
            vocab = embeddings.num_embeddings
            decoder.embeddings.word_embeddings = self._get_resized_embeddings(
                decoder.embeddings.word_embeddings, vocab
            )
            decoder.lm_head = _resized_projection(self, decoder.lm_head, vocab)
            decoder.config.vocab_size = vocab
            if self.config.tie_word_embeddings:
                decoder.lm_head.weight = decoder.embeddings.word_embeddings.weight
        return embeddings

    def _vision_keep_indices(
        self, pixel_values: torch.Tensor, image_keep_indices: torch.LongTensor | None
    ) -> torch.LongTensor | None:
        if not self.training:
            return None  # evaluation always sees all patches
        if image_keep_indices is not None or self.config.image_mask_ratio == 0 or self.config.fusion == "early":
            return image_keep_indices
        vision = self.config.vision_config
        frames = pixel_values.shape[1] // getattr(vision, "tubelet_size", 1) if pixel_values.ndim == 5 else 1
        tokens = frames * (pixel_values.shape[-2] // vision.patch_size) * (pixel_values.shape[-1] // vision.patch_size)
        return random_keep_indices(pixel_values.shape[0], tokens, self.config.image_mask_ratio, pixel_values.device)

    def _check_inputs(self, input_ids, pixel_values, attention_mask, mlm_input_ids, mlm_labels, image_ids) -> None:
        if input_ids is None or pixel_values is None:
            raise ValueError("MMForPreTraining needs both input_ids and pixel_values.")
        _check_batch(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, image_ids=image_ids)
        if "mlm" not in self.config.objectives:
            return
        if mlm_input_ids is None or mlm_labels is None:
            raise ValueError(
                "The 'mlm' objective needs mlm_input_ids and mlm_labels (DataCollatorForMMPretraining makes them)."
            )
        if mlm_input_ids.shape != input_ids.shape:
            raise ValueError(
                f"mlm_input_ids must have the shape of input_ids {tuple(input_ids.shape)}, got "
                f"{tuple(mlm_input_ids.shape)}."
            )
        _check_lm_labels(mlm_labels, input_ids, self.config.text_config.vocab_size, name="mlm_labels")

    def _check_distillation(self, distillation: MMITCDistillation, batch: int) -> None:
        if "itc" not in self.config.objectives or self.config.fusion == "early":
            raise ValueError(
                "itc_distillation needs the 'itc' objective and a fusion with towers; this model has objectives "
                f"{list(self.config.objectives)} and fusion={self.config.fusion!r}."
            )
        if self.config.contrastive_loss != "infonce":
            raise ValueError(
                "itc_distillation (ALBEF momentum distillation) distils a softmax over the bank: it needs "
                f"contrastive_loss='infonce', this model has {self.config.contrastive_loss!r}."
            )
        if distillation.momentum_image_embeds.shape[0] != batch or distillation.momentum_text_embeds.shape[0] != batch:
            raise ValueError(
                f"itc_distillation momentum embeddings must have the batch's {batch} rows, got "
                f"{distillation.momentum_image_embeds.shape[0]} and {distillation.momentum_text_embeds.shape[0]}."
            )
        inputs = {"queue_input_ids": distillation.queue_input_ids, "queue_attention_mask": distillation.queue_attention_mask,
                  "queue_pixel_values": distillation.queue_pixel_values}
        given = [name for name, value in inputs.items() if value is not None]
        if not given:
            return
        if len(given) < len(inputs):
            missing = sorted(set(inputs) - set(given))
            raise ValueError(f"itc_distillation: queue inputs for ITM mining come together; {missing} missing.")
        queue = distillation.queue_text_embeds.shape[0]
        rows = {name: inputs[name].shape[0] for name in given}
        if any(n != queue for n in rows.values()) or inputs["queue_input_ids"].shape != inputs["queue_attention_mask"].shape:
            raise ValueError(
                f"itc_distillation: the queue holds {queue} features, but its inputs have rows {rows} (ids "
                f"{tuple(inputs['queue_input_ids'].shape)}, mask {tuple(inputs['queue_attention_mask'].shape)})."
            )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mlm_input_ids: torch.LongTensor | None = None,
        mlm_labels: torch.LongTensor | None = None,
        image_ids: torch.LongTensor | None = None,
        image_keep_indices: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        return_loss: bool = True,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        itc_distillation: MMITCDistillation | None = None,
        itm_negatives: MMITMNegatives | None = None,
        **kwargs,
    ) -> MMForPreTrainingOutput:
        r"""
        Args:
            input_ids, attention_mask (`(B, L)`): The clean text of each pair.
            pixel_values (`(B, C, H, W)` or `(B, T, C, H, W)`): The image (or clip) of each pair.
            mlm_input_ids, mlm_labels (`(B, L)`): Masked copy of `input_ids` and its targets (-100 elsewhere); needed
                by the `mlm` objective (see `DataCollatorForMMPretraining`).
            image_ids (`(B,)`): Items with equal ids are never used as each other's ITC / ITM negatives.
            image_keep_indices (`(B, K)`): FLIP patch indices to keep; drawn here when absent.
            return_loss (`bool`): Compute the losses (always, during training).
            output_attentions, output_hidden_states (`bool`): Also return the text stream's attention maps / hidden
                states (see [`MMForPreTrainingOutput`]).
            pixel_values_videos (`(B, T, C, H, W)`): Video clips (the processor's key); instead of `pixel_values`.
            itc_distillation ([`MMITCDistillation`]): ALBEF momentum distillation for the `itc` objective (InfoNCE,
                late / hybrid / coattention): the student is scored against the teacher's features of the batch and
                the queue, with `alpha`-mixed soft targets (`losses.distilled_contrastive_loss`). `MMTrainer` passes
                it in training when given a `MomentumDistillation`; `logits_per_image` stays the student's own.
            itm_negatives ([`MMITMNegatives`]): ITM hard negatives chosen outside (gradient caching mines them over all
                micro-batches), with the partners' inputs; replaces the model's own mining (late fusion has no ITM).
        """
        pixel_values = visual_input(pixel_values, pixel_values_videos)
        self._check_inputs(input_ids, pixel_values, attention_mask, mlm_input_ids, mlm_labels, image_ids)
        if itc_distillation is not None:
            self._check_distillation(itc_distillation, input_ids.shape[0])
        if itm_negatives is not None:
            self._check_itm_negatives(itm_negatives, input_ids.shape[0])
        flags = {
            "output_attentions": _flag(output_attentions, self.config, "output_attentions"),
            "output_hidden_states": _flag(output_hidden_states, self.config, "output_hidden_states"),
        }
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = self._vision_keep_indices(pixel_values, image_keep_indices)
        if self.config.fusion == "early":
            losses, out = self._early_objectives(input_ids, pixel_values, attention_mask, mlm_input_ids, mlm_labels,
                                                 image_ids, flags)
        else:
            losses, out = self._tower_objectives(input_ids, pixel_values, attention_mask, mlm_input_ids, mlm_labels,
                                                 image_ids, keep, flags, itc_distillation, itm_negatives)
        if not any(flags.values()):
            # Tower outputs only when asked for: Trainer's evaluation would otherwise gather every token state.
            out.pop("text_model_output", None)
            out.pop("vision_model_output", None)
        loss = sum(getattr(self.config, f"{name}_weight") * value for name, value in losses.items())
        return MMForPreTrainingOutput(loss=loss if losses else None, **{f"{k}_loss": v for k, v in losses.items()}, **out)

    # -- the objectives ---------------------------------------------------------------------------------------------

    def _itc(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        image_ids: torch.LongTensor | None,
        distillation: MMITCDistillation | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """ITC loss of `config.contrastive_loss` over the global batch (None without the `itc` objective) and the local
        `(B, B)` image-to-text logits, which the loss computes once for both (they also feed hard-negative mining).
        With `distillation`, ALBEF's momentum-distilled InfoNCE over the teacher's features and the queue instead."""
        if "itc" not in self.config.objectives:
            return None, self.mm.similarity(image_embeds, text_embeds)
        if distillation is None:
            return self.mm.itc_loss_and_logits(image_embeds, text_embeds, image_ids)
        rank, world_size = distributed_info()
        return distilled_contrastive_loss(
            image_embeds,
            text_embeds,
            distillation.momentum_image_embeds,
            distillation.momentum_text_embeds,
            distillation.queue_image_embeds,
            distillation.queue_text_embeds,
            self.mm.clamped_logit_scale(),
            distillation.alpha,
            rank,
            world_size,
            ids=image_ids,
            queue_ids=distillation.queue_ids,
        )

    def _itm_pairs(
        self, similarity: torch.Tensor | None, image_ids: torch.LongTensor | None, batch: int, device: torch.device
    ) -> tuple[torch.LongTensor, torch.LongTensor, torch.LongTensor]:
        """ITM pairs `(text_idx, image_idx, labels)` of the local batch: the B positives (i, i), then for every image a
        hard negative text and for every text a hard negative image (ALBEF), drawn from softmax(similarity) in training
        and the hardest in eval. Early fusion has no unimodal similarity: its negatives are uniform (one image per
        text)."""
        rows = torch.arange(batch, device=device)
        if similarity is None:
            ids = image_ids if image_ids is not None else rows
            _, neg_image = sample_hard_negatives(torch.zeros(batch, batch, device=device), ids, sample=self.training)
            has = neg_image >= 0
            text_idx, image_idx = torch.cat([rows, rows[has]]), torch.cat([rows, neg_image[has]])
            labels = torch.cat([torch.ones_like(rows), torch.zeros_like(text_idx[batch:])])
            return text_idx, image_idx, labels
        return _hard_negative_pairs(*sample_hard_negatives(similarity.detach(), image_ids, sample=self.training), rows)

    def _itm_inputs(
        self,
        text_hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        image_hidden: torch.Tensor,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        similarity: torch.Tensor,
        image_ids: torch.LongTensor | None,
        queue: "MMITCDistillation | None" = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.LongTensor, torch.LongTensor, int]:
        """What the fusion layers need for ITM: `(text_rows, mask_rows, image_bank, image_idx, labels, offset)`.

        Hard negatives are mined over the global batch: under torch.distributed the local images are scored against
        every rank's texts and the local texts against every rank's images (the ITC embeddings, gathered without
        gradient), and the chosen negatives' token states come from the gathered banks (with gradient, back to the
        rank that owns them: BLIP's cross-rank ITM). In one process the banks are the local batch. `image_idx` indexes
        `image_bank`; this rank's own rows start at `offset`.

        With a `queue` that carries its entries' inputs (momentum distillation's queue, `queue_input_ids` and
        `queue_pixel_values`), the candidates are `[global batch ; queue]`: queue entries are scored by their teacher
        features, and those picked as negatives are encoded here by the towers (with gradient) and fused like batch
        rows. Entries sharing an `image_id` with a row are never its negatives."""
        rank, world_size = distributed_info()
        batch = text_hidden.shape[0]
        if queue is not None and (queue.queue_input_ids is None or queue.queue_input_ids.shape[0] == 0):
            queue = None  # a queue without inputs (or still empty) only serves ITC
        if world_size == 1 and queue is None:
            text_idx, image_idx, labels = self._itm_pairs(similarity, image_ids, batch, text_hidden.device)
            return text_hidden[text_idx], attention_mask[text_idx], image_hidden, image_idx, labels, 0
        offset = rank * batch
        own = torch.arange(batch, device=text_hidden.device) + offset
        ids = own if image_ids is None else image_ids
        with torch.no_grad():
            all_ids = gather_features(ids, rank, world_size)  # (W*B,)
            all_image = gather_features(image_embeds.detach(), rank, world_size)  # (W*B, D)
            all_text = gather_features(text_embeds.detach(), rank, world_size)
            if queue is not None:
                # Columns W*B.. are the queue; entries without an id (-1) never equal a row's id.
                queue_ids = queue.queue_ids
                if queue_ids is None:
                    queue_ids = torch.full((queue.queue_text_embeds.shape[0],), -1, device=ids.device)
                all_ids = torch.cat([all_ids, queue_ids.to(all_ids)])  # (W*B + Q,)
                all_image = torch.cat([all_image, queue.queue_image_embeds.to(all_image)])
                all_text = torch.cat([all_text, queue.queue_text_embeds.to(all_text)])
            sim_i2t = self.mm.similarity(image_embeds.detach(), all_text)  # (B, C)
            sim_t2i = self.mm.similarity(all_image, text_embeds.detach()).t()  # (B, C)
        negatives = sample_hard_negatives(sim_i2t, ids, sample=self.training, similarity_t2i=sim_t2i,
                                          column_ids=all_ids)
        text_idx, image_idx, labels = _hard_negative_pairs(*negatives, own)
        text_bank = gather_padded(text_hidden, rank, world_size)  # (W*B, L_max, D)
        mask_bank = gather_padded(attention_mask, rank, world_size)
        image_bank = gather_padded(image_hidden, rank, world_size)  # (W*B, N, Dv)
        if queue is not None:
            text_bank, mask_bank, text_idx = self._queue_texts(queue, text_bank, mask_bank, text_idx)
            image_bank, image_idx = self._queue_images(queue, image_bank, image_idx)
        return text_bank[text_idx], mask_bank[text_idx], image_bank, image_idx, labels, offset

    def _append_partner_texts(
        self, text_bank: torch.Tensor, mask_bank: torch.Tensor, input_ids: torch.LongTensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encodes partner texts `(N_p, L')` with the text tower (with gradient) and appends their states and masks to
        the banks, both padded to the longer length."""
        partners = self.mm.encode_text(input_ids, mask).last_hidden_state  # (N_p, L', D)
        length = max(text_bank.shape[1], partners.shape[1])
        text_bank = torch.cat([pad_length(text_bank, length), pad_length(partners, length)])
        mask_bank = torch.cat([pad_length(mask_bank, length), pad_length(mask.to(mask_bank), length)])
        return text_bank, mask_bank

    def _append_partner_images(
        self, image_bank: torch.Tensor, pixel_values: torch.Tensor, keep: torch.LongTensor | None = None
    ) -> torch.Tensor:
        """Encodes partner images with the vision tower (with gradient; FLIP masks drawn here in training unless
        `keep` is given) and appends their states `(N_p, 1+K, Dv)` to the bank."""
        if keep is None:
            keep = self._vision_keep_indices(pixel_values, None)
        partners = self.mm.encode_image(pixel_values, keep).last_hidden_state
        return torch.cat([image_bank, partners])

    def _queue_texts(
        self, queue: "MMITCDistillation", text_bank: torch.Tensor, mask_bank: torch.Tensor, text_idx: torch.LongTensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.LongTensor]:
        """Encodes the queue texts that `text_idx` picked (indices >= len(text_bank)) once each and appends them to
        the bank; returns the bank and the indices into it."""
        picked, text_idx = _remap_picks(text_idx, text_bank.shape[0])
        if picked.numel() == 0:
            return text_bank, mask_bank, text_idx
        ids, mask = queue.queue_input_ids[picked], queue.queue_attention_mask[picked]  # (N_q, L_q)
        length = int(mask.any(0).nonzero().max()) + 1  # the queue is padded to the longest text it ever held
        text_bank, mask_bank = self._append_partner_texts(text_bank, mask_bank, ids[:, :length], mask[:, :length])
        return text_bank, mask_bank, text_idx

    def _queue_images(
        self, queue: "MMITCDistillation", image_bank: torch.Tensor, image_idx: torch.LongTensor
    ) -> tuple[torch.Tensor, torch.LongTensor]:
        """`_queue_texts` for the images: the picked queue images go through the vision tower (fresh FLIP masks in
        training) and are appended to `image_bank`."""
        picked, image_idx = _remap_picks(image_idx, image_bank.shape[0])
        if picked.numel() == 0:
            return image_bank, image_idx
        return self._append_partner_images(image_bank, queue.queue_pixel_values[picked]), image_idx

    def _given_itm_inputs(
        self,
        text_hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        image_hidden: torch.Tensor,
        negatives: MMITMNegatives,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.LongTensor, torch.LongTensor]:
        """`_itm_inputs` for negatives chosen outside: the partner rows are encoded by the towers (with gradient) and
        appended to the batch's text and image banks, then paired as ALBEF pairs them."""
        text_bank, mask_bank, image_bank = text_hidden, attention_mask, image_hidden
        if negatives.input_ids is not None and negatives.input_ids.shape[0] > 0:
            partner_mask = negatives.attention_mask
            if partner_mask is None:
                partner_mask = torch.ones_like(negatives.input_ids)
            text_bank, mask_bank = self._append_partner_texts(text_bank, mask_bank, negatives.input_ids, partner_mask)
        if negatives.pixel_values is not None and negatives.pixel_values.shape[0] > 0:
            image_bank = self._append_partner_images(image_bank, negatives.pixel_values, negatives.image_keep_indices)
        own = torch.arange(text_hidden.shape[0], device=text_hidden.device)
        text_idx, image_idx, labels = _hard_negative_pairs(negatives.text_for_image, negatives.image_for_text, own)
        return text_bank[text_idx], mask_bank[text_idx], image_bank, image_idx, labels

    def _check_itm_negatives(self, negatives: MMITMNegatives, batch: int) -> None:
        if "itm" not in self.config.objectives or self.config.fusion not in CROSS_FUSIONS:
            raise ValueError(
                "itm_negatives needs the 'itm' objective and a fusion layer stack (hybrid, coattention); this model has "
                f"objectives {list(self.config.objectives)} and fusion={self.config.fusion!r}."
            )
        sizes = {
            "text_for_image": (negatives.input_ids, negatives.text_for_image),
            "image_for_text": (negatives.pixel_values, negatives.image_for_text),
        }
        for name, (partners, index) in sizes.items():
            if index.shape != (batch,):
                raise ValueError(f"itm_negatives.{name} must have shape ({batch},), got {tuple(index.shape)}.")
            rows = batch + (0 if partners is None else partners.shape[0])
            if bool(((index < -1) | (index >= rows)).any()):
                raise ValueError(
                    f"itm_negatives.{name} indexes [batch rows ; partners], i.e. [-1, {rows}); got {index.tolist()}."
                )

    def _itm(self, fused_cls: torch.Tensor, labels: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ITM loss and `(P, 2)` logits from the fused `[CLS]` states `(P, D)` of the pairs."""
        logits = self.itm_head(fused_cls)
        return itm_loss(logits, labels), logits

    def _mlm(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """MLM loss and logits from the states of the masked positions only, `(N_masked, D)` -> `(N_masked, V)`.
        Projecting just those rows onto the vocabulary (~15% of tokens) is most of the MLM head's saving. With
        `config.loss_chunk_size` the projection and loss are fused, chunk by chunk, and no logits are returned."""
        head = self.mlm_head
        chunk = _loss_chunk(self.config, head.decoder)
        if chunk is None:
            logits = head(hidden)
            return token_cross_entropy(logits, targets), logits
        states = head.transform(hidden)  # (N_masked, D)
        return fused_linear_cross_entropy(states, head.decoder.weight, head.decoder.bias, targets, chunk), None

    def _lm(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor, image_hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Captioning loss and the logits of every real next token `(N_targets, V)`: the decoder reads the caption
        with the image, and only positions whose target is not padding are projected onto the vocabulary (fused with
        the loss, chunk by chunk and without logits, under `config.loss_chunk_size`)."""
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        decoder = self.text_decoder
        chunk = _loss_chunk(self.config, decoder.lm_head)
        if chunk is None:
            return decoder.lm_loss(input_ids, image_hidden, attention_mask, labels)
        hidden = decoder(input_ids, image_hidden, attention_mask, compute_logits=False).last_hidden_state  # (B, L, D)
        targets = next_token_targets(labels)  # (B, L)
        scored = targets != -100
        head = decoder.lm_head
        return fused_linear_cross_entropy(hidden[scored], head.weight, head.bias, targets[scored], chunk), None

    # -- composition per fusion -------------------------------------------------------------------------------------

    def _tower_objectives(
        self, input_ids, pixel_values, attention_mask, mlm_input_ids, mlm_labels, image_ids, keep, flags,
        itc_distillation=None, itm_negatives=None,
    ) -> tuple[dict[str, torch.Tensor], dict]:
        objectives = set(self.config.objectives)
        mm = self.mm
        losses: dict[str, torch.Tensor] = {}
        out: dict = {}
        # Per-token states are computed only where something reads them (fusion, the captioning decoder); ITC alone
        # needs just the pooled [CLS] states.
        fuses = self.config.fusion in CROSS_FUSIONS and bool({"itm", "mlm"} & objectives)
        image = mm.encode_image(pixel_values, keep, pooled_only=not (fuses or "lm" in objectives), **flags)
        out["vision_model_output"] = image
        image_hidden = image.last_hidden_state  # (B, 1+K, Dv)
        batch = input_ids.shape[0]
        need_clean, need_mlm = bool({"itc", "itm"} & objectives), "mlm" in objectives
        text_hidden = text_pooled = masked_hidden = None
        if need_clean and need_mlm:
            # One text-tower pass over [clean ; masked] (rows are independent): twice the rows per matmul and half
            # the kernel calls of two passes.
            both = mm.encode_text(torch.cat([input_ids, mlm_input_ids]), attention_mask.repeat(2, 1), **flags)
            text_hidden, masked_hidden = both.last_hidden_state.split(batch)
            text_pooled = text_hidden[:, 0]
            out["text_model_output"] = _rows(both, batch)
        elif need_clean:
            clean = mm.encode_text(input_ids, attention_mask, pooled_only="itm" not in objectives, **flags)
            text_hidden, text_pooled = clean.last_hidden_state, clean.pooler_output
            out["text_model_output"] = clean
        elif need_mlm:
            masked = mm.encode_text(mlm_input_ids, attention_mask, **flags)
            masked_hidden = masked.last_hidden_state
            out["text_model_output"] = masked
        if "text_model_output" in out:
            out["hidden_states"] = out["text_model_output"].hidden_states
            out["attentions"] = out["text_model_output"].attentions
        # The fusion layers run once over every pair that needs them: ITM pairs, then the masked texts for MLM. Their
        # last layer computes only what the heads read: [CLS] for ITM, the masked positions for MLM.
        fuse_text, fuse_mask, fuse_image, fuse_positions = [], [], [], []
        image_bank, offset = image_hidden, 0  # the images the fused rows index (every rank's, for global ITM)
        if need_mlm:
            is_masked = mlm_labels != -100
            num_masked = is_masked.sum(1)
            # Each row's masked positions first (in order), padded with unmasked ones up to the longest row.
            slots = max(int(num_masked.max()), 1)
            mlm_positions = torch.argsort((~is_masked).to(torch.int8), dim=1, stable=True)[:, :slots]
        if text_pooled is not None:
            image_embeds, text_embeds = mm.project_image(image.pooler_output), mm.project_text(text_pooled)
            similarity_loss, similarity = self._itc(image_embeds, text_embeds, image_ids, itc_distillation)
            out.update(logits_per_image=similarity, image_embeds=image_embeds, text_embeds=text_embeds)
            if similarity_loss is not None:
                losses["itc"] = similarity_loss
            if "itm" in objectives and itm_negatives is not None:
                itm_text, itm_mask, image_bank, image_idx, itm_labels = self._given_itm_inputs(
                    text_hidden, attention_mask, image_hidden, itm_negatives
                )
            elif "itm" in objectives:
                itm_text, itm_mask, image_bank, image_idx, itm_labels, offset = self._itm_inputs(
                    text_hidden, attention_mask, image_hidden, image_embeds, text_embeds, similarity, image_ids,
                    itc_distillation,
                )
            if "itm" in objectives:
                fuse_text.append(itm_text)
                fuse_mask.append(itm_mask)
                fuse_image.append(image_idx)
                fuse_positions.append(image_idx.new_zeros(image_idx.shape[0], slots if need_mlm else 1))
        if need_mlm:
            rows = torch.arange(batch, device=input_ids.device) + offset
            fuse_text.append(masked_hidden)
            fuse_mask.append(attention_mask)
            fuse_image.append(rows)
            fuse_positions.append(mlm_positions)
        if fuse_text:
            # Rows gathered from other ranks are padded to the longest text of any rank: pad the local ones alike.
            length = max(t.shape[1] for t in fuse_text)
            fused = mm.fuse(
                torch.cat([pad_length(t, length) for t in fuse_text]),
                torch.cat([pad_length(m, length) for m in fuse_mask]),
                image_bank,
                image_index=torch.cat(fuse_image),
                output_positions=torch.cat(fuse_positions),
            ).last_hidden_state
            if "itm" in objectives:
                losses["itm"], out["itm_logits"] = self._itm(fused[: image_idx.shape[0], 0], itm_labels)
                out["itm_labels"] = itm_labels
            if need_mlm:
                # Slot j of row b holds a masked token when j < num_masked[b]: row-major order of `is_masked`.
                in_slot = torch.arange(slots, device=is_masked.device) < num_masked.unsqueeze(1)
                losses["mlm"], out["mlm_logits"] = self._mlm(fused[fused.shape[0] - batch :][in_slot],
                                                             mlm_labels[is_masked])
        if "lm" in objectives:
            losses["lm"], out["lm_logits"] = self._lm(input_ids, attention_mask, image_hidden)
        return losses, out

    def _early_objectives(
        self, input_ids, pixel_values, attention_mask, mlm_input_ids, mlm_labels, image_ids, flags
    ) -> tuple[dict[str, torch.Tensor], dict]:
        objectives = self.config.objectives
        losses: dict[str, torch.Tensor] = {}
        out: dict = {}
        length, batch = input_ids.shape[1], input_ids.shape[0]
        if "itm" in objectives:
            text_idx, image_idx, itm_labels = self._itm_pairs(None, image_ids, batch, input_ids.device)
            joint = self.mm.joint_encode(input_ids[text_idx], pixel_values[image_idx], attention_mask[text_idx], **flags)
            losses["itm"], out["itm_logits"] = self._itm(joint.last_hidden_state[:, 0], itm_labels)
            out["itm_labels"] = itm_labels
            # The first B rows are the matched pairs: their joint states are the ones reported.
            out["hidden_states"] = _first_rows(joint.hidden_states, batch)
            out["attentions"] = _first_rows(joint.attentions, batch)
        if "mlm" in objectives:
            joint = self.mm.joint_encode(mlm_input_ids, pixel_values, attention_mask, **flags)
            is_masked = mlm_labels != -100
            losses["mlm"], out["mlm_logits"] = self._mlm(joint.last_hidden_state[:, :length][is_masked],
                                                         mlm_labels[is_masked])
            out.setdefault("hidden_states", joint.hidden_states)
            out.setdefault("attentions", joint.attentions)
        return losses, out


def _hard_negative_pairs(
    neg_text: torch.LongTensor, neg_image: torch.LongTensor, own: torch.LongTensor
) -> tuple[torch.LongTensor, torch.LongTensor, torch.LongTensor]:
    """`(text_idx, image_idx, labels)` of the ITM pairs: the positives (own[i], own[i]); (image own[i], its hard
    negative text); (the hard negative image, text own[j]). Rows without a valid negative (-1) are left out."""
    has_t, has_i = neg_text >= 0, neg_image >= 0
    image_idx = torch.cat([own, own[has_t], neg_image[has_i]])
    text_idx = torch.cat([own, neg_text[has_t], own[has_i]])
    labels = torch.cat([torch.ones_like(own), torch.zeros_like(text_idx[own.shape[0]:])])
    return text_idx, image_idx, labels


def _remap_picks(index: torch.LongTensor, rows: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Indices into `[bank (rows) ; queue]` -> (the distinct queue entries picked, in order; indices into
    `[bank ; those entries]`)."""
    from_queue = index >= rows
    picked, position = torch.unique(index[from_queue] - rows, return_inverse=True)  # sorted, distinct
    index = index.clone()
    index[from_queue] = rows + position
    return picked, index


def _first_rows(states: tuple[torch.Tensor, ...] | None, batch: int) -> tuple[torch.Tensor, ...] | None:
    return None if states is None else tuple(s[:batch] for s in states)


def _rows(out: BaseModelOutputWithPooling, batch: int) -> BaseModelOutputWithPooling:
    """The first `batch` rows of a tower output (the clean half of a [clean ; masked] pass)."""
    return BaseModelOutputWithPooling(
        last_hidden_state=out.last_hidden_state[:batch],
        pooler_output=out.pooler_output[:batch],
        hidden_states=_first_rows(out.hidden_states, batch),
        attentions=_first_rows(out.attentions, batch),
    )


def _resized_projection(model: MMPreTrainedModel, projection: nn.Linear, vocab: int) -> nn.Linear:
    """A vocabulary projection resized to `vocab` rows (new rows initialised as transformers does), kept as the
    decoder's projection class so the decoding fast path and the initialised flag survive."""
    return _as_projection(projection, model._get_resized_lm_head(projection, vocab))


def _as_projection(current: nn.Module, new: nn.Module) -> nn.Module:
    """`new` (a plain `nn.Linear` from resizing) as an instance of `current`'s class, sharing its parameters."""
    if type(new) is nn.Linear and type(current) is not nn.Linear and isinstance(current, nn.Linear):
        projection = type(current)(new.in_features, new.out_features, bias=new.bias is not None, device="meta")
        projection.weight, projection.bias = new.weight, new.bias
        new = projection
    new._is_hf_initialized = True
    return new


def _loss_chunk(config: MMConfig, projection: nn.Module) -> int | None:
    """`config.loss_chunk_size` when the loss over `projection`'s vocabulary can be fused, else `None`. Only a plain
    `nn.Linear` can: a wrapped projection (peft's LoRA or `modules_to_save`) is more than its `weight`, so it is called
    whole."""
    return config.loss_chunk_size if isinstance(projection, nn.Linear) else None
