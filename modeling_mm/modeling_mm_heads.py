"""Task heads of the MM family: pretraining, VQA, retrieval, captioning / generative VQA, image+text classification.

Every head holds an [`MMModel`] under `mm` (the base-model prefix), so `from_pretrained(<any MM checkpoint>)` loads the
shared towers and initialises only what is new, and every head returns its loss when given labels (Trainer works
unchanged).

Co-attention fusion has what hybrid fusion has (two towers, fusion layers, a fused text `[CLS]`): wherever these docs
say "hybrid", "coattention" behaves the same.
"""

from dataclasses import dataclass

import torch
from torch import nn

from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from .configuration_mm import CROSS_FUSIONS, MMConfig, MMTextConfig
from .losses import (
    causal_lm_loss,
    distilled_contrastive_loss,
    distributed_info,
    gather_features,
    gather_padded,
    itm_loss,
    sample_hard_negatives,
    token_cross_entropy,
)
from .modeling_mm import (
    MMModel,
    MMOutput,
    MMPreTrainedModel,
    MMTextDecoder,
    _eager_checks,
    _flag,
    visual_input,
)


__all__ = [
    "MMCausalLMOutput",
    "MMForConditionalGeneration",
    "MMForImageTextClassification",
    "MMForImageTextRetrieval",
    "MMForPreTraining",
    "MMForPreTrainingOutput",
    "MMForVisualQuestionAnswering",
    "MMITCDistillation",
    "MMITMNegatives",
    "MMImageTextClassifierOutput",
    "MMRetrievalOutput",
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
            row-major order of `mlm_labels != -100`.
        lm_logits (`torch.FloatTensor` of shape `(N_targets, V)`): Captioning predictions of every real next token
            (positions whose target is not padding), in row-major order.
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
    """

    momentum_image_embeds: torch.FloatTensor
    momentum_text_embeds: torch.FloatTensor
    queue_image_embeds: torch.FloatTensor
    queue_text_embeds: torch.FloatTensor
    alpha: float
    queue_ids: torch.LongTensor | None = None


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


@dataclass
class MMImageTextClassifierOutput(MMOutput):
    r"""
    Output of the classifier heads ([`MMForVisualQuestionAnswering`], [`MMForImageTextClassification`]).

    Args:
        loss (`torch.FloatTensor` of shape `()`): Classification loss when `labels` are given.
        logits (`torch.FloatTensor` of shape `(B, num_labels)`): Class scores (before softmax / sigmoid).
        pooler_output (`torch.FloatTensor` of shape `(B, hidden)`): The joint representation the classifier read.
        hidden_states, attentions (`tuple(torch.FloatTensor)`): The fused stream's (early, hybrid), when asked for;
            late fusion has no fused stream (its towers' states are in the tower outputs).
        cross_attentions (`tuple(torch.FloatTensor)`): Text-over-image attention per fusion layer (hybrid).
        text_model_output, vision_model_output (`BaseModelOutputWithPooling`): The towers' outputs (late, hybrid),
            with `output_hidden_states` / `output_attentions`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None


@dataclass
class MMRetrievalOutput(MMOutput):
    r"""
    Output of [`MMForImageTextRetrieval`].

    Args:
        loss (`torch.FloatTensor` of shape `()`): ITC (+ ITM with hard negatives, where the fusion allows) loss.
        logits_per_image (`torch.FloatTensor` of shape `(B_image, B_text)`): ITC scores (late, hybrid).
        logits_per_text (`torch.FloatTensor` of shape `(B_text, B_image)`): Transpose of `logits_per_image`.
        itm_logits (`torch.FloatTensor` of shape `(B, 2)`): Match scores of the given pairs (early, hybrid).
        text_embeds, image_embeds (`torch.FloatTensor` of shape `(B, projection_dim)`): Normalised embeddings.
        hidden_states, attentions, cross_attentions (`tuple(torch.FloatTensor)`): As in [`MMModelOutput`].
        text_model_output, vision_model_output (`BaseModelOutputWithPooling`): The towers' outputs (late, hybrid),
            with `output_hidden_states` / `output_attentions`.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None


@dataclass
class MMCausalLMOutput(MMOutput):
    r"""
    Output of [`MMForConditionalGeneration`] (transformers' causal-LM output plus the image encoder's, as 5.x
    vision-language models return it).

    Args:
        loss (`torch.FloatTensor` of shape `()`): Next-token loss, when `labels` are given.
        logits (`torch.FloatTensor` of shape `(B, L, V)`): Next-token scores (the last `logits_to_keep` positions).
        cache (`Cache`): Self- and cross-attention keys/values for the next decoding step.
        hidden_states, attentions, cross_attentions (`tuple(torch.FloatTensor)`): Per decoder layer, when asked for.
        image_outputs (`BaseModelOutputWithPooling`): The vision tower's output for this call (`None` on decoding
            steps that read the image keys from the cache).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


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

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(self.act(self.dense(hidden_states))))


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
        frames = pixel_values.shape[1] if pixel_values.ndim == 5 else 1
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
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.LongTensor, torch.LongTensor, int]:
        """What the fusion layers need for ITM: `(text_rows, mask_rows, image_bank, image_idx, labels, offset)`.

        Hard negatives are mined over the global batch: under torch.distributed the local images are scored against
        every rank's texts and the local texts against every rank's images (the ITC embeddings, gathered without
        gradient), and the chosen negatives' token states come from the gathered banks (with gradient, back to the
        rank that owns them: BLIP's cross-rank ITM). In one process the banks are the local batch. `image_idx` indexes
        `image_bank`; this rank's own rows start at `offset`."""
        rank, world_size = distributed_info()
        batch = text_hidden.shape[0]
        if world_size == 1:
            text_idx, image_idx, labels = self._itm_pairs(similarity, image_ids, batch, text_hidden.device)
            return text_hidden[text_idx], attention_mask[text_idx], image_hidden, image_idx, labels, 0
        offset = rank * batch
        own = torch.arange(batch, device=text_hidden.device) + offset
        ids = own if image_ids is None else image_ids
        with torch.no_grad():
            all_ids = gather_features(ids, rank, world_size)  # (W*B,)
            all_image = gather_features(image_embeds.detach(), rank, world_size)  # (W*B, D)
            all_text = gather_features(text_embeds.detach(), rank, world_size)
            sim_i2t = self.mm.similarity(image_embeds.detach(), all_text)  # (B, W*B)
            sim_t2i = self.mm.similarity(all_image, text_embeds.detach()).t()  # (B, W*B)
        negatives = sample_hard_negatives(sim_i2t, ids, sample=self.training, similarity_t2i=sim_t2i,
                                          column_ids=all_ids)
        text_idx, image_idx, labels = _hard_negative_pairs(*negatives, own)
        text_bank = gather_padded(text_hidden, rank, world_size)  # (W*B, L_max, D)
        mask_bank = gather_padded(attention_mask, rank, world_size)
        image_bank = gather_padded(image_hidden, rank, world_size)  # (W*B, N, Dv)
        return text_bank[text_idx], mask_bank[text_idx], image_bank, image_idx, labels, offset

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
            partners = self.mm.encode_text(negatives.input_ids, partner_mask).last_hidden_state  # (N_t, L', D)
            length = max(text_hidden.shape[1], partners.shape[1])
            text_bank = torch.cat([_pad_length(text_hidden, length), _pad_length(partners, length)])
            mask_bank = torch.cat([_pad_length(attention_mask, length), _pad_length(partner_mask, length)])
        if negatives.pixel_values is not None and negatives.pixel_values.shape[0] > 0:
            keep = negatives.image_keep_indices
            if keep is None:
                keep = self._vision_keep_indices(negatives.pixel_values, None)
            partners = self.mm.encode_image(negatives.pixel_values, keep).last_hidden_state  # (N_i, 1+K, Dv)
            image_bank = torch.cat([image_hidden, partners])
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

    def _mlm(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MLM loss and logits from the states of the masked positions only, `(N_masked, D)` -> `(N_masked, V)`.
        Projecting just those rows onto the vocabulary (~15% of tokens) is most of the MLM head's saving."""
        logits = self.mlm_head(hidden)
        return token_cross_entropy(logits, targets), logits

    def _lm(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor, image_hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Captioning loss and the logits of every real next token `(N_targets, V)`: the decoder reads the caption
        with the image, and only positions whose target is not padding are projected onto the vocabulary."""
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return self.text_decoder.lm_loss(input_ids, image_hidden, attention_mask, labels)

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
                    text_hidden, attention_mask, image_hidden, image_embeds, text_embeds, similarity, image_ids
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
                torch.cat([_pad_length(t, length) for t in fuse_text]),
                torch.cat([_pad_length(m, length) for m in fuse_mask]),
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


def _pad_length(states: torch.Tensor, length: int, value: float = 0) -> torch.Tensor:
    """`(N, L, ...)` -> `(N, length, ...)`, padding dim 1 with `value`."""
    pad = length - states.shape[1]
    return nn.functional.pad(states, (0, 0) * (states.ndim - 2) + (0, pad), value=value) if pad else states


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


class _MMClassifierBase(MMPreTrainedModel):
    """Shared body of the classifier heads: the joint representation of an image-text pair, then an MLP classifier
    (ViLT's VQA head). Early/hybrid read the fused `[CLS]`; late concatenates the two towers' pooled states. No ITC
    projections or temperature are built: a classifier's loss never trains them."""

    def __init__(self, config: MMConfig):
        super().__init__(config)
        self.mm = MMModel(config, add_projections=False)
        if config.fusion == "late":
            width = config.text_config.hidden_size + config.vision_config.hidden_size
        else:
            width = config.text_config.hidden_size
        act, eps = _text_act_eps(config)
        self.classifier = nn.Sequential(
            nn.Linear(width, 2 * width),
            ACT2FN[act],
            nn.LayerNorm(2 * width, eps=eps),
            nn.Linear(2 * width, config.num_labels),
        )
        self.post_init()

    def joint_representation(
        self,
        input_ids: torch.LongTensor | None,
        pixel_values: torch.FloatTensor | None,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.LongTensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """The pair's representation: an [`MMModelOutput`] whose `pooler_output` `(B, width)` the classifier reads."""
        if input_ids is None or pixel_values is None:
            raise ValueError(f"{type(self).__name__} needs both input_ids and pixel_values.")
        _check_batch(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
        flags = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states}
        if self.config.fusion == "late":
            text = self.mm.encode_text(input_ids, attention_mask, token_type_ids, pooled_only=True, **flags)
            image = self.mm.encode_image(pixel_values, pooled_only=True, **flags)
            return ModelOutput(
                pooler_output=torch.cat([text.pooler_output, image.pooler_output], dim=-1),
                text_model_output=text,
                vision_model_output=image,
            )
        return self.mm(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_dict=True,
            **flags,
        )

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of `config.problem_type` (transformers' convention; inferred from the labels when unset):
        `regression` is the mean squared error, `single_label_classification` cross-entropy over class ids, and
        `multi_label_classification` (soft scores or multi-hot) the VQAv2 soft-score binary cross-entropy."""
        problem = self.config.problem_type
        if problem == "regression" or (problem is None and self.config.num_labels == 1 and labels.is_floating_point()):
            if labels.numel() != logits.numel():
                raise ValueError(f"Regression labels must have {logits.numel()} values, got shape {tuple(labels.shape)}.")
            return nn.functional.mse_loss(logits.reshape(-1).float(), labels.reshape(-1).float())
        if labels.ndim == 1 and not labels.is_floating_point():
            if int(labels.max()) >= logits.shape[-1] or int(labels.min()) < 0:
                raise ValueError(f"labels must be class ids in [0, {logits.shape[-1]}); got {labels.tolist()}.")
            return nn.functional.cross_entropy(logits, labels)
        if labels.shape != logits.shape:
            raise ValueError(
                f"Soft or multi-hot labels must have shape {tuple(logits.shape)}, got {tuple(labels.shape)}."
            )
        # Soft-score BCE scaled by the number of answers: the VQAv2 convention (Anderson et al.; ViLT).
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype)) * labels.shape[1]

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        **kwargs,
    ) -> MMImageTextClassifierOutput:
        r"""
        Args:
            labels (`torch.LongTensor` of shape `(B,)` or `torch.FloatTensor` of shape `(B, num_labels)`): class ids
                (cross-entropy), or soft scores / multi-hot targets (binary cross-entropy).
            pixel_values_videos (`(B, T, C, H, W)`): Video clips (the processor's key); instead of `pixel_values`.
        """
        output_attentions = _flag(output_attentions, self.config, "output_attentions")
        output_hidden_states = _flag(output_hidden_states, self.config, "output_hidden_states")
        asked = output_attentions or output_hidden_states
        joint = self.joint_representation(
            input_ids,
            visual_input(pixel_values, pixel_values_videos),
            attention_mask,
            token_type_ids,
            output_attentions,
            output_hidden_states,
        )
        logits = self.classifier(joint.pooler_output)
        loss = self.classification_loss(logits, labels) if labels is not None else None
        return MMImageTextClassifierOutput(
            loss=loss,
            logits=logits,
            pooler_output=joint.pooler_output,
            hidden_states=joint.get("hidden_states"),
            attentions=joint.get("attentions"),
            cross_attentions=joint.get("cross_attentions"),
            # Tower outputs only when asked for: Trainer's evaluation would otherwise gather every token state.
            text_model_output=joint.get("text_model_output") if asked else None,
            vision_model_output=joint.get("vision_model_output") if asked else None,
        )


class MMForVisualQuestionAnswering(_MMClassifierBase):
    """VQA as classification over an answer vocabulary (`config.id2label`): class-id labels train with cross-entropy,
    `(B, num_answers)` soft scores with the VQAv2 soft-score BCE."""


class MMForImageTextClassification(_MMClassifierBase):
    """Image + text -> label(s), e.g. multimodal sentiment. Single-label (class ids) or multi-label (multi-hot float
    labels, sigmoid at inference) as in `config.problem_type`."""


class MMForImageTextRetrieval(MMPreTrainedModel):
    """Image-text retrieval: ITC scores over a gallery (late, hybrid), ITM re-ranking of the top-k (hybrid, early).
    Trains with the ITC (+ hard-negative ITM) objectives of pretraining, through the same objective methods.

    The retrieval objectives are those of `config.objectives` that retrieval uses (`itc`, `itm`), or the fusion's
    default when none is: ITC (late, hybrid) or ITM (early). They are kept on the model, not written into the
    config the caller passed."""

    def __init__(self, config: MMConfig):
        super().__init__(config)
        objectives = [o for o in config.objectives if o in ("itc", "itm")]
        self.retrieval_objectives = objectives or (["itm"] if config.fusion == "early" else ["itc"])
        # Scoring needs the projections (late, hybrid) and, where the fusion allows it, the ITM head over the fused
        # [CLS] (early, hybrid), whether or not ITM is trained.
        self.mm = MMModel(config)
        if config.fusion != "late":
            self.itm_head = nn.Linear(config.text_config.hidden_size, 2)
        self.post_init()

    # The objective methods of pretraining, shared (not copied): they read `self.mm`, `self.itm_head`, `self.config`.
    _itm_pairs = MMForPreTraining._itm_pairs
    _itm_inputs = MMForPreTraining._itm_inputs
    _itm = MMForPreTraining._itm

    def _retrieval_loss(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor,
        attention_mask: torch.Tensor,
        image_ids: torch.LongTensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ITC (+ hard-negative ITM) loss over the batch, and the local `(B, B)` ITC logits (late, hybrid)."""
        mm, objectives, batch = self.mm, self.retrieval_objectives, input_ids.shape[0]
        losses, similarity = [], None
        if self.config.fusion == "early":
            text_idx, image_idx, labels = self._itm_pairs(None, image_ids, batch, input_ids.device)
            joint = mm.joint_encode(input_ids[text_idx], pixel_values[image_idx], attention_mask[text_idx])
            losses.append(self.config.itm_weight * self._itm(joint.last_hidden_state[:, 0], labels)[0])
            return sum(losses), None
        fuses = "itm" in objectives
        image = mm.encode_image(pixel_values, pooled_only=not fuses)
        text = mm.encode_text(input_ids, attention_mask, pooled_only=not fuses)
        image_embeds, text_embeds = mm.project_image(image.pooler_output), mm.project_text(text.pooler_output)
        if "itc" in objectives:
            itc, similarity = mm.itc_loss_and_logits(image_embeds, text_embeds, image_ids)
            losses.append(self.config.itc_weight * itc)
        else:
            similarity = mm.similarity(image_embeds, text_embeds)
        if fuses:
            itm_text, itm_mask, image_bank, image_idx, labels, _ = self._itm_inputs(
                text.last_hidden_state, attention_mask, image.last_hidden_state, image_embeds, text_embeds, similarity,
                image_ids,
            )
            fused = mm.fuse(
                itm_text, itm_mask, image_bank, image_index=image_idx,
                output_positions=image_idx.new_zeros(image_idx.shape[0], 1),
            ).last_hidden_state
            losses.append(self.config.itm_weight * self._itm(fused[:, 0], labels)[0])
        return sum(losses), similarity

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        **kwargs,
    ) -> MMRetrievalOutput:
        r"""
        Scores the given pairs. With `return_loss=True` (or in training) also returns the retrieval training loss
        (in training only the loss and the ITC logits, as nothing else is read).
        """
        pixel_values = visual_input(pixel_values, pixel_values_videos)
        if input_ids is None or pixel_values is None:
            raise ValueError("MMForImageTextRetrieval needs both input_ids and pixel_values.")
        _check_batch(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, image_ids=image_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        loss = None
        if return_loss or self.training:
            loss, similarity = self._retrieval_loss(input_ids, pixel_values, attention_mask, image_ids)
            if self.training:
                return MMRetrievalOutput(loss=loss, logits_per_image=similarity)
        output_attentions = _flag(output_attentions, self.config, "output_attentions")
        output_hidden_states = _flag(output_hidden_states, self.config, "output_hidden_states")
        asked = output_attentions or output_hidden_states
        out = self.mm(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        itm_logits = self.itm_head(out.pooler_output) if out.pooler_output is not None else None
        return MMRetrievalOutput(
            loss=loss,
            logits_per_image=out.logits_per_image,
            logits_per_text=out.logits_per_text,
            itm_logits=itm_logits,
            text_embeds=out.text_embeds,
            image_embeds=out.image_embeds,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            cross_attentions=out.cross_attentions,
            # Tower outputs only when asked for: Trainer's evaluation would otherwise gather every token state.
            text_model_output=out.text_model_output if asked else None,
            vision_model_output=out.vision_model_output if asked else None,
        )

    def get_text_features(self, *args, **kwargs) -> BaseModelOutputWithPooling:
        """As [`MMModel.get_text_features`]."""
        return self.mm.get_text_features(*args, **kwargs)

    def get_image_features(self, *args, **kwargs) -> BaseModelOutputWithPooling:
        """As [`MMModel.get_image_features`]."""
        return self.mm.get_image_features(*args, **kwargs)

    def embed_image(self, *args, **kwargs) -> torch.FloatTensor:
        """As [`MMModel.embed_image`]."""
        return self.mm.embed_image(*args, **kwargs)

    def embed_text(self, *args, **kwargs) -> torch.FloatTensor:
        """As [`MMModel.embed_text`]."""
        return self.mm.embed_text(*args, **kwargs)

    @torch.no_grad()
    def itm_scores(self, input_ids, pixel_values, attention_mask=None) -> torch.FloatTensor:
        """Match probability of each (text i, image i) pair, `(B,)`."""
        if self.config.fusion == "late":
            raise ValueError("ITM scores need fusion='hybrid' or 'early'.")
        if self.config.fusion == "early":
            pooled = self.mm.joint_encode(input_ids, pixel_values, attention_mask).last_hidden_state[:, 0]
        else:
            pooled = self.mm(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).pooler_output
        return self.itm_head(pooled).softmax(-1)[:, 1]

    @torch.no_grad()
    def rank_texts(
        self, pixel_values: torch.FloatTensor, input_ids: torch.LongTensor, attention_mask=None, top_k: int = 16
    ) -> torch.FloatTensor:
        """Scores every text for every image, `(B_image, B_text)`: ITC similarity, then for hybrid models the top-k
        texts of each image re-scored by ITM (their scores become `1 + p(match)`, so they rank above the rest)."""
        if self.config.fusion == "early":
            raise ValueError("rank_texts needs unimodal embeddings (fusion 'late' or 'hybrid'); early fusion scores "
                             "pairs with itm_scores().")
        mm = self.mm
        image = mm.encode_image(pixel_values)
        text = mm.encode_text(input_ids, attention_mask)
        scores = mm.project_image(image.pooler_output) @ mm.project_text(text.pooler_output).t()  # cosine in [-1, 1]
        if self.config.fusion not in CROSS_FUSIONS:
            return scores
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        k = min(top_k, scores.shape[1])
        top = scores.topk(k, dim=1).indices  # (B_image, k)
        image_idx = torch.arange(scores.shape[0], device=scores.device).repeat_interleave(k)
        text_idx = top.reshape(-1)
        fused = mm.fuse(
            text.last_hidden_state[text_idx], attention_mask[text_idx], image.last_hidden_state, image_index=image_idx
        ).last_hidden_state
        match = self.itm_head(fused[:, 0]).softmax(-1)[:, 1].view(-1, k)
        return scores.scatter(1, top, 1.0 + match)


class MMForConditionalGeneration(MMPreTrainedModel, GenerationMixin):
    """Captioning and open-ended VQA: the vision tower feeds an image-conditioned causal decoder (late and hybrid).
    `generate(pixel_values=..., input_ids=<optional prompt>)` supports greedy, beam search, sampling and assisted
    decoding with a KV cache; the image keys/values are computed once and cached too. Only the vision tower of the
    base model is built: the decoder has its own embeddings, and nothing else is read."""

    _tied_weights_keys = {"text_decoder.lm_head.weight": "text_decoder.embeddings.word_embeddings.weight"}
    input_modalities = ("image", "video", "text")

    def __init__(self, config: MMConfig):
        if config.fusion == "early":
            raise ValueError(
                "MMForConditionalGeneration needs a vision tower to cross-attend to (fusion 'late' or 'hybrid')."
            )
        if config.num_decoder_layers < 1:
            raise ValueError("MMForConditionalGeneration needs config.num_decoder_layers >= 1.")
        # Generation reads its special tokens from the text config. BERT-family configs often leave bos/eos unset;
        # the WordPiece convention ([CLS] starts, [SEP] ends) is what MMTextConfig's defaults spell out.
        text = config.text_config
        for name, default in (("bos_token_id", MMTextConfig.bos_token_id), ("eos_token_id", MMTextConfig.eos_token_id)):
            if getattr(text, name, None) is None:
                setattr(text, name, default)
        if getattr(text, "use_cache", None) is False:
            text.use_cache = True
        super().__init__(config)
        self.mm = MMModel(config, add_text_model=False, add_projections=False, add_fusion_layers=False)
        self.text_decoder = MMTextDecoder(config)
        self.post_init()
        self._fill_special_tokens()

    def _fill_special_tokens(self) -> None:
        # from_pretrained rebuilds generation_config from the top-level config.json when a checkpoint has no
        # generation_config.json (e.g. a pretraining checkpoint); the special tokens live in the text config.
        text = self.config.text_config
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(self.generation_config, name, None) is None:
                setattr(self.generation_config, name, getattr(text, name, None))
        if self.generation_config.decoder_start_token_id is None:
            self.generation_config.decoder_start_token_id = self.generation_config.bos_token_id
        self.generation_config.use_cache = True

    def get_input_embeddings(self) -> nn.Module:
        return self.text_decoder.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_decoder.embeddings.word_embeddings = value
        self.text_decoder.config.vocab_size = value.num_embeddings

    def get_output_embeddings(self) -> nn.Module:
        return self.text_decoder.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        # resize_token_embeddings hands back a plain nn.Linear: kept as the decoder's vocabulary projection class (the
        # same parameters, still marked initialised so post_init does not re-randomise an untied head).
        self.text_decoder.lm_head = _as_projection(self.text_decoder.lm_head, new_embeddings)
        self.text_decoder.config.vocab_size = new_embeddings.out_features

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """The vision tower's output; `pooler_output` holds, per image, the `(N, D)` tokens the decoder cross-attends
        to (transformers' convention for image-to-text models: the image features the language side consumes)."""
        out = self.mm.encode_image(
            visual_input(pixel_values, pixel_values_videos),
            output_attentions=_flag(output_attentions, self.config, "output_attentions"),
            output_hidden_states=_flag(output_hidden_states, self.config, "output_hidden_states"),
        )
        out.pooler_output = out.last_hidden_state  # (B, N, D)
        return out

    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.LongTensor:
        r"""
        Captions `pixel_values` (or `pixel_values_videos`), continuing the prompt `input_ids` when one is given (all
        `GenerationMixin.generate` options apply). The processor closes every text with `[SEP]`, which the decoder
        only saw as end-of-caption, so a prompt ending in `[SEP]` loses it first, as in BLIP:
        `processor(images=image, text="a photo of")` continues "a photo of", and `text=""` (`[CLS] [SEP]`) captions
        from the bare start token, like no prompt at all.
        """
        self._fill_special_tokens()
        pixel_values = visual_input(pixel_values, kwargs.pop("pixel_values_videos", None))
        eos = self.generation_config.eos_token_id
        if input_ids is not None and input_ids.shape[1] > 1 and isinstance(eos, int):
            if bool((input_ids[:, -1] == eos).all()):
                input_ids = input_ids[:, :-1]
                attention_mask = attention_mask[:, :-1] if attention_mask is not None else None
        return super().generate(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, **kwargs)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, *args, **kwargs) -> dict:
        """transformers' preparation, plus: `pixel_values` still go to a forward whose cache holds no image keys yet.
        Generation drops them after the first step; an assistant model's first call (assisted decoding) or a cache
        handed in by the caller can be such a step."""
        pixel_values = kwargs.get("pixel_values")
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        if pixel_values is not None and "pixel_values" not in inputs and not _holds_image_keys(inputs.get("cache")):
            inputs["pixel_values"] = pixel_values
        return inputs

    @deprecate_kwarg("past_key_values", "6.0.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        shift_labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> MMCausalLMOutput:
        r"""
        Args:
            input_ids (`(B, L)`): `[CLS] caption [SEP]` (the `[CLS]` acts as the start token).
            pixel_values (`(B, C, H, W)` or `(B, T, C, H, W)`): Needed unless `cache` already holds the image keys.
            labels (`(B, L)`): Usually `input_ids` with padding set to -100; shifted inside, as in transformers.
            cache (`Cache`): Key/values from previous steps (generation); `past_key_values`, its former name, is
                still accepted.
            logits_to_keep (`int` or `torch.Tensor`): Project only the last N positions onto the vocabulary (0: all),
                or the given positions; `generate()` passes 1. Ignored when `labels` are given (the loss needs all).
            pixel_values_videos (`(B, T, C, H, W)`): Video clips (the processor's key); instead of `pixel_values`.
            shift_labels (`(B, L)`): Targets already shifted (position t's own next token, -100 to ignore), as
                transformers' causal-LM losses take them under sequence parallelism; used instead of shifting
                `labels`.
        """
        if input_ids is None:
            raise ValueError("MMForConditionalGeneration needs input_ids (start with the [CLS] token).")
        pixel_values = visual_input(pixel_values, pixel_values_videos)
        output_attentions = _flag(output_attentions, self.config, "output_attentions")
        output_hidden_states = _flag(output_hidden_states, self.config, "output_hidden_states")
        image_outputs = None
        cache_ready = _holds_image_keys(cache)
        if pixel_values is not None and not cache_ready:
            _check_batch(input_ids=input_ids, pixel_values=pixel_values)
            image_outputs = self.mm.encode_image(
                pixel_values, output_attentions=output_attentions, output_hidden_states=output_hidden_states
            )
        elif not cache_ready:
            raise ValueError("MMForConditionalGeneration needs pixel_values (no image keys are cached yet).")
        use_cache = use_cache if use_cache is not None else (labels is None and shift_labels is None and not self.training)
        for name, value in (("labels", labels), ("shift_labels", shift_labels)):
            if value is not None:
                _check_lm_labels(value, input_ids, self.config.text_config.vocab_size, name=name)
        scored = labels is not None or shift_labels is not None
        decoded = self.text_decoder(
            input_ids,
            image_outputs.last_hidden_state if image_outputs is not None else None,
            attention_mask,
            cache=cache,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            position_ids=position_ids,
            logits_to_keep=0 if scored else logits_to_keep,
        )
        loss = None
        if shift_labels is not None:
            loss = token_cross_entropy(decoded.logits.reshape(-1, decoded.logits.shape[-1]), shift_labels.reshape(-1))
        elif labels is not None:
            loss = causal_lm_loss(decoded.logits, labels)
        return MMCausalLMOutput(
            loss=loss,
            logits=decoded.logits,
            cache=decoded.cache,
            hidden_states=decoded.hidden_states,
            attentions=decoded.attentions,
            cross_attentions=decoded.cross_attentions,
            image_outputs=image_outputs,
        )


def _holds_image_keys(cache: Cache | None) -> bool:
    """Whether a generation cache already holds the image keys/values of the decoder's first cross-attention."""
    return isinstance(cache, EncoderDecoderCache) and bool(cache.is_updated.get(0, False))


def _as_projection(current: nn.Module, new: nn.Module) -> nn.Module:
    """`new` (a plain `nn.Linear` from resizing) as an instance of `current`'s class, sharing its parameters."""
    if type(new) is nn.Linear and type(current) is not nn.Linear and isinstance(current, nn.Linear):
        projection = type(current)(new.in_features, new.out_features, bias=new.bias is not None, device="meta")
        projection.weight, projection.bias = new.weight, new.bias
        new = projection
    new._is_hf_initialized = True
    return new
