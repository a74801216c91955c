"""Task heads of the MM family: pretraining, VQA, retrieval, captioning / generative VQA, image+text classification.

Every head holds an [`MMModel`] under `mm` (the base-model prefix), so `from_pretrained(<any MM checkpoint>)` loads the
shared towers and initialises only what is new, and every head returns its loss when given labels (Trainer works
unchanged).
"""

from dataclasses import dataclass
import copy

import torch
from torch import nn

from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions
from transformers.utils import ModelOutput

from .configuration_mm import MMConfig, MMTextConfig
from .losses import causal_lm_loss, contrastive_loss, distributed_info, itm_loss, sample_hard_negatives
from .modeling_mm import MMModel, MMPreTrainedModel, MMTextDecoder, MMVocabProjection, _eager_checks


__all__ = [
    "MMForConditionalGeneration",
    "MMForImageTextClassification",
    "MMForImageTextRetrieval",
    "MMForPreTraining",
    "MMForPreTrainingOutput",
    "MMForVisualQuestionAnswering",
    "MMImageTextClassifierOutput",
    "MMRetrievalOutput",
    "random_keep_indices",
]


@dataclass
class MMForPreTrainingOutput(ModelOutput):
    r"""
    Output of [`MMForPreTraining`]; every objective's loss is reported next to the weighted total.

    Args:
        loss (`torch.FloatTensor` of shape `()`): Weighted sum of the objectives that ran.
        itc_loss, itm_loss, mlm_loss, lm_loss (`torch.FloatTensor` of shape `()`): Each objective's loss.
        logits_per_image (`torch.FloatTensor` of shape `(B, B)`): ITC logits of the local batch.
        itm_logits (`torch.FloatTensor` of shape `(P, 2)`): ITM scores of positives then hard negatives.
        itm_labels (`torch.LongTensor` of shape `(P,)`): 1 for matched pairs, 0 for negatives.
        mlm_logits (`torch.FloatTensor` of shape `(N_masked, V)`): MLM predictions at the masked positions, in
            row-major order of `mlm_labels != -100`.
        lm_logits (`torch.FloatTensor` of shape `(N_targets, V)`): Captioning predictions of every real next token
            (positions whose target is not padding), in row-major order.
    """

    loss: torch.FloatTensor | None = None
    itc_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    itm_labels: torch.LongTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    lm_logits: torch.FloatTensor | None = None


@dataclass
class MMImageTextClassifierOutput(ModelOutput):
    r"""
    Output of the classifier heads ([`MMForVisualQuestionAnswering`], [`MMForImageTextClassification`]).

    Args:
        loss (`torch.FloatTensor` of shape `()`): Classification loss when `labels` are given.
        logits (`torch.FloatTensor` of shape `(B, num_labels)`): Class scores (before softmax / sigmoid).
        pooler_output (`torch.FloatTensor` of shape `(B, hidden)`): The joint representation the classifier read.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None


@dataclass
class MMRetrievalOutput(ModelOutput):
    r"""
    Output of [`MMForImageTextRetrieval`].

    Args:
        loss (`torch.FloatTensor` of shape `()`): ITC (+ ITM with hard negatives, where the fusion allows) loss.
        logits_per_image (`torch.FloatTensor` of shape `(B_image, B_text)`): ITC scores (late, hybrid).
        logits_per_text (`torch.FloatTensor` of shape `(B_text, B_image)`): Transpose of `logits_per_image`.
        itm_logits (`torch.FloatTensor` of shape `(B, 2)`): Match scores of the given pairs (early, hybrid).
        text_embeds, image_embeds (`torch.FloatTensor` of shape `(B, projection_dim)`): Normalised embeddings.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None


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
    MM with the pretraining objectives named in `config.objectives` (weights `config.*_weight`):

    - **itc**: symmetric InfoNCE, features all-gathered with gradient across ranks (late, hybrid);
    - **itm**: image-text matching on the fused `[CLS]`, with ALBEF hard negatives drawn from the ITC similarity
      (hybrid; random negatives for early), never between items that share an `image_id`;
    - **mlm**: masked language modelling on the fused text stream (early, hybrid);
    - **lm**: captioning with the image-conditioned causal decoder (late, hybrid).

    FLIP: in training mode, `config.image_mask_ratio` of the patches are dropped per sample (or the collator's
    `image_keep_indices` are used); in eval mode the model always sees every patch.
    """

    def __init__(self, config: MMConfig):
        super().__init__(config)
        self.mm = MMModel(config)
        text_hidden = config.text_config.hidden_size
        act, eps = _text_act_eps(config)
        tied = {}
        # Heads exist only for the objectives that train them (ITM also serves retrieval re-ranking).
        if config.fusion in ("early", "hybrid"):
            self.itm_head = nn.Linear(text_hidden, 2)
        if "mlm" in config.objectives:
            self.mlm_head = MMMLMHead(text_hidden, config.text_config.vocab_size, act, eps)
            tied["mlm_head.decoder.weight"] = "mm.text_model.embeddings.word_embeddings.weight"
        if "lm" in config.objectives:
            self.text_decoder = MMTextDecoder(config)
            tied["text_decoder.lm_head.weight"] = "text_decoder.embeddings.word_embeddings.weight"
        self._tied_weights_keys = tied
        self.post_init()

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
        **kwargs,
    ) -> MMForPreTrainingOutput:
        r"""
        Args:
            input_ids, attention_mask (`(B, L)`): The clean text of each pair.
            pixel_values (`(B, C, H, W)` or `(B, T, C, H, W)`): The image (or clip) of each pair.
            mlm_input_ids, mlm_labels (`(B, L)`): Masked copy of `input_ids` and its targets (-100 elsewhere); needed
                by the `mlm` objective (see `DataCollatorForMMPretraining`).
            image_ids (`(B,)`): Items with equal ids are never used as each other's ITM negatives.
            image_keep_indices (`(B, K)`): FLIP patch indices to keep; drawn here when absent.
            return_loss (`bool`): Compute the losses (always, during training).
        """
        if input_ids is None or pixel_values is None:
            raise ValueError("MMForPreTraining needs both input_ids and pixel_values.")
        batch = _check_batch(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, image_ids=image_ids
        )
        objectives = self.config.objectives
        if "mlm" in objectives and (mlm_input_ids is None or mlm_labels is None):
            raise ValueError(
                "The 'mlm' objective needs mlm_input_ids and mlm_labels (DataCollatorForMMPretraining makes them)."
            )
        if "mlm" in objectives:
            if mlm_input_ids.shape != input_ids.shape:
                raise ValueError(
                    f"mlm_input_ids must have the shape of input_ids {tuple(input_ids.shape)}, got "
                    f"{tuple(mlm_input_ids.shape)}."
                )
            _check_lm_labels(mlm_labels, input_ids, self.config.text_config.vocab_size, name="mlm_labels")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = self._vision_keep_indices(pixel_values, image_keep_indices)
        losses: dict[str, torch.Tensor] = {}
        out: dict[str, torch.Tensor] = {}
        if self.config.fusion == "early":
            self._early_objectives(input_ids, pixel_values, attention_mask, mlm_input_ids, mlm_labels, image_ids, losses, out)
        else:
            self._tower_objectives(
                input_ids, pixel_values, attention_mask, mlm_input_ids, mlm_labels, image_ids, keep, losses, out
            )
        loss = sum(getattr(self.config, f"{name}_weight") * value for name, value in losses.items())
        return MMForPreTrainingOutput(loss=loss if losses else None, **{f"{k}_loss": v for k, v in losses.items()}, **out)

    def _tower_objectives(
        self, input_ids, pixel_values, attention_mask, mlm_input_ids, mlm_labels, image_ids, keep, losses, out
    ) -> None:
        objectives = self.config.objectives
        mm = self.mm
        # Per-token states are computed only where something reads them (fusion, the captioning decoder); ITC alone
        # needs just the pooled [CLS] states.
        fuses = self.config.fusion == "hybrid" and bool({"itm", "mlm"} & set(objectives))
        image = mm.encode_image(pixel_values, keep, pooled_only=not (fuses or "lm" in objectives))
        image_hidden = image.last_hidden_state  # (B, 1+K, Dv)
        batch = input_ids.shape[0]
        need_clean, need_mlm = bool({"itc", "itm"} & set(objectives)), "mlm" in objectives
        text_hidden = text_pooled = masked_hidden = None
        if need_clean and need_mlm:
            # One text-tower pass over [clean ; masked] (rows are independent): twice the rows per matmul and half
            # the kernel calls of two passes.
            both = mm.encode_text(torch.cat([input_ids, mlm_input_ids]), attention_mask.repeat(2, 1))
            text_hidden, masked_hidden = both.last_hidden_state.split(batch)
            text_pooled = text_hidden[:, 0]
        elif need_clean:
            clean = mm.encode_text(input_ids, attention_mask, pooled_only="itm" not in objectives)
            text_hidden, text_pooled = clean.last_hidden_state, clean.pooler_output
        elif need_mlm:
            masked_hidden = mm.encode_text(mlm_input_ids, attention_mask).last_hidden_state
        # The fusion layers run once over every pair that needs them: ITM pairs, then the masked texts for MLM. Their
        # last layer computes only what the heads read: [CLS] for ITM, the masked positions for MLM.
        fuse_text, fuse_mask, fuse_image, fuse_positions = [], [], [], []
        if need_mlm:
            masked = mlm_labels != -100
            num_masked = masked.sum(1)
            # Each row's masked positions first (in order), padded with unmasked ones up to the longest row.
            slots = max(int(num_masked.max()), 1)
            mlm_positions = torch.argsort((~masked).to(torch.int8), dim=1, stable=True)[:, :slots]
        rows = torch.arange(batch, device=input_ids.device)
        if text_pooled is not None:
            image_embeds = nn.functional.normalize(mm.visual_projection(image.pooler_output), dim=-1)
            text_embeds = nn.functional.normalize(mm.text_projection(text_pooled), dim=-1)
            scale = mm.clamped_logit_scale()
            similarity = scale * image_embeds @ text_embeds.t()  # (B, B) local
            out["logits_per_image"] = similarity
            if "itc" in objectives:
                rank, world_size = distributed_info()
                losses["itc"] = contrastive_loss(image_embeds, text_embeds, scale, rank, world_size, ids=image_ids)
            if "itm" in objectives:
                neg_text, neg_image = sample_hard_negatives(similarity.detach(), image_ids)
                has_t, has_i = neg_text >= 0, neg_image >= 0
                # Pairs: positives (i, i); (image i, hard negative text); (hard negative image, text j).
                image_idx = torch.cat([rows, rows[has_t], neg_image[has_i]])
                text_idx = torch.cat([rows, neg_text[has_t], rows[has_i]])
                fuse_text.append(text_hidden[text_idx])
                fuse_mask.append(attention_mask[text_idx])
                fuse_image.append(image_idx)
                fuse_positions.append(text_idx.new_zeros(text_idx.shape[0], slots if need_mlm else 1))
        if need_mlm:
            fuse_text.append(masked_hidden)
            fuse_mask.append(attention_mask)
            fuse_image.append(rows)
            fuse_positions.append(mlm_positions)
        if fuse_text:
            fused, _ = mm.fuse(
                torch.cat(fuse_text),
                torch.cat(fuse_mask),
                image_hidden,
                image_index=torch.cat(fuse_image),
                output_positions=torch.cat(fuse_positions),
            )
            if "itm" in objectives:
                logits = self.itm_head(fused[: text_idx.shape[0], 0])
                labels = torch.cat([torch.ones_like(rows), torch.zeros_like(text_idx[batch:])])
                losses["itm"] = itm_loss(logits, labels)
                out["itm_logits"], out["itm_labels"] = logits, labels
            if need_mlm:
                # Slot j of row b holds a masked token when j < num_masked[b]: row-major order of `masked`.
                in_slot = torch.arange(slots, device=masked.device) < num_masked.unsqueeze(1)
                losses["mlm"], out["mlm_logits"] = self._masked_lm(
                    fused[fused.shape[0] - batch :][in_slot], mlm_labels[masked]
                )
        if "lm" in objectives:
            hidden = self.text_decoder(input_ids, image_hidden, attention_mask, compute_logits=False).last_hidden_state
            # Position t predicts token t+1; only real (non-padding) targets are scored, which skips the vocabulary
            # projection of every padded position.
            targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
            valid = targets != -100
            logits = self.text_decoder.lm_head(hidden[:, :-1][valid])  # (N_valid, V)
            losses["lm"] = nn.functional.cross_entropy(logits.float(), targets[valid])
            out["lm_logits"] = logits

    def _masked_lm(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MLM loss and logits from the states of the masked positions only, `(N_masked, D)` -> `(N_masked, V)`.
        Projecting just those rows onto the vocabulary (~15% of tokens) is most of the MLM head's saving."""
        logits = self.mlm_head(hidden)
        if logits.shape[0] == 0:
            return logits.sum() * 0.0, logits
        return nn.functional.cross_entropy(logits.float(), targets), logits

    def _early_objectives(
        self, input_ids, pixel_values, attention_mask, mlm_input_ids, mlm_labels, image_ids, losses, out
    ) -> None:
        objectives = self.config.objectives
        length = input_ids.shape[1]
        if "itm" in objectives:
            batch = input_ids.shape[0]
            # Early fusion has no unimodal similarity to mine, so negatives are random images of another image_id.
            ids = image_ids if image_ids is not None else torch.arange(batch, device=input_ids.device)
            similarity = torch.zeros(batch, batch, device=input_ids.device)
            _, neg_image = sample_hard_negatives(similarity, ids)
            has = neg_image >= 0
            rows = torch.arange(batch, device=input_ids.device)
            text_idx = torch.cat([rows, rows[has]])
            image_idx = torch.cat([rows, neg_image[has]])
            hidden, _ = self.mm.joint_encode(input_ids[text_idx], pixel_values[image_idx], attention_mask[text_idx])
            logits = self.itm_head(hidden[:, 0])
            labels = torch.cat([torch.ones_like(rows), torch.zeros_like(rows[has])])
            losses["itm"] = itm_loss(logits, labels)
            out["itm_logits"], out["itm_labels"] = logits, labels
        if "mlm" in objectives:
            hidden, _ = self.mm.joint_encode(mlm_input_ids, pixel_values, attention_mask)
            masked = mlm_labels != -100
            losses["mlm"], out["mlm_logits"] = self._masked_lm(hidden[:, :length][masked], mlm_labels[masked])


class _MMClassifierBase(MMPreTrainedModel):
    """Shared body of the classifier heads: the joint representation of an image-text pair, then an MLP classifier
    (ViLT's VQA head). Early/hybrid read the fused `[CLS]`; late concatenates the two towers' pooled states."""

    def __init__(self, config: MMConfig):
        super().__init__(config)
        self.mm = MMModel(config)
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

    def joint_representation(self, input_ids, pixel_values, attention_mask, token_type_ids=None) -> torch.Tensor:
        if input_ids is None or pixel_values is None:
            raise ValueError(f"{type(self).__name__} needs both input_ids and pixel_values.")
        _check_batch(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
        if self.config.fusion == "late":
            text = self.mm.encode_text(input_ids, attention_mask, token_type_ids, pooled_only=True).pooler_output
            image = self.mm.encode_image(pixel_values, pooled_only=True).pooler_output
            return torch.cat([text, image], dim=-1)
        return self.mm(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).pooler_output

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
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

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> MMImageTextClassifierOutput:
        r"""
        Args:
            labels (`torch.LongTensor` of shape `(B,)` or `torch.FloatTensor` of shape `(B, num_labels)`): class ids
                (cross-entropy), or soft scores / multi-hot targets (binary cross-entropy).
        """
        pooled = self.joint_representation(input_ids, pixel_values, attention_mask, token_type_ids)
        logits = self.classifier(pooled)
        loss = self.classification_loss(logits, labels) if labels is not None else None
        return MMImageTextClassifierOutput(loss=loss, logits=logits, pooler_output=pooled)


class MMForVisualQuestionAnswering(_MMClassifierBase):
    """VQA as classification over an answer vocabulary (`config.id2label`): class-id labels train with cross-entropy,
    `(B, num_answers)` soft scores with the VQAv2 soft-score BCE."""


class MMForImageTextClassification(_MMClassifierBase):
    """Image + text -> label(s), e.g. multimodal sentiment. Single-label (class ids) or multi-label (multi-hot float
    labels, sigmoid at inference) as in `config.problem_type`."""


class MMForImageTextRetrieval(MMForPreTraining):
    """Image-text retrieval: ITC scores over a gallery (late, hybrid), ITM re-ranking of the top-k (hybrid, early).
    Trains with the ITC (+ hard-negative ITM) objectives of pretraining."""

    def __init__(self, config: MMConfig):
        config = copy.deepcopy(config)  # the retrieval objectives must not leak into the caller's config
        config.objectives = [o for o in config.objectives if o in ("itc", "itm")] or (
            ["itm"] if config.fusion == "early" else ["itc"]
        )
        super().__init__(config)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        **kwargs,
    ) -> MMRetrievalOutput:
        r"""
        Scores the given pairs. With `return_loss=True` (or in training) also returns the retrieval training loss.
        """
        loss = None
        if return_loss or self.training:
            trained = super().forward(
                input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, image_ids=image_ids
            )
            if self.training:
                return MMRetrievalOutput(loss=trained.loss, logits_per_image=trained.logits_per_image)
            loss = trained.loss
        if self.config.fusion == "early":
            hidden, _ = self.mm.joint_encode(input_ids, pixel_values, attention_mask)
            return MMRetrievalOutput(loss=loss, itm_logits=self.itm_head(hidden[:, 0]))
        out = self.mm(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
        itm_logits = self.itm_head(out.pooler_output) if out.pooler_output is not None else None
        return MMRetrievalOutput(
            loss=loss,
            logits_per_image=out.logits_per_image,
            logits_per_text=out.logits_per_text,
            itm_logits=itm_logits,
            text_embeds=out.text_embeds,
            image_embeds=out.image_embeds,
        )

    def get_text_features(self, input_ids, attention_mask=None) -> torch.FloatTensor:
        return self.mm.get_text_features(input_ids, attention_mask)

    def get_image_features(self, pixel_values) -> torch.FloatTensor:
        return self.mm.get_image_features(pixel_values)

    @torch.no_grad()
    def itm_scores(self, input_ids, pixel_values, attention_mask=None) -> torch.FloatTensor:
        """Match probability of each (text i, image i) pair, `(B,)`."""
        if self.config.fusion == "late":
            raise ValueError("ITM scores need fusion='hybrid' or 'early'.")
        if self.config.fusion == "early":
            hidden, _ = self.mm.joint_encode(input_ids, pixel_values, attention_mask)
            pooled = hidden[:, 0]
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
        image_embeds = nn.functional.normalize(mm.visual_projection(image.pooler_output), dim=-1)
        text_embeds = nn.functional.normalize(mm.text_projection(text.pooler_output), dim=-1)
        scores = image_embeds @ text_embeds.t()  # cosine in [-1, 1]
        if self.config.fusion != "hybrid":
            return scores
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        k = min(top_k, scores.shape[1])
        top = scores.topk(k, dim=1).indices  # (B_image, k)
        image_idx = torch.arange(scores.shape[0], device=scores.device).repeat_interleave(k)
        text_idx = top.reshape(-1)
        fused, _ = mm.fuse(
            text.last_hidden_state[text_idx], attention_mask[text_idx], image.last_hidden_state, image_index=image_idx
        )
        match = self.itm_head(fused[:, 0]).softmax(-1)[:, 1].view(-1, k)
        return scores.scatter(1, top, 1.0 + match)


class MMForConditionalGeneration(MMPreTrainedModel, GenerationMixin):
    """Captioning and open-ended VQA: the vision tower feeds an image-conditioned causal decoder (late and hybrid).
    `generate(pixel_values=..., input_ids=<optional prompt>)` supports greedy, beam search and sampling with a KV cache;
    the image keys/values are computed once and cached too."""

    _tied_weights_keys = {"text_decoder.lm_head.weight": "text_decoder.embeddings.word_embeddings.weight"}

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
        self.mm = MMModel(config)
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

    def get_output_embeddings(self) -> nn.Module:
        return self.text_decoder.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        # resize_token_embeddings hands back a plain nn.Linear; keep it as the decoder's vocabulary projection class
        # (same parameters) and let the decoder accept the new token ids.
        if type(new_embeddings) is nn.Linear:
            projection = MMVocabProjection(
                new_embeddings.in_features, new_embeddings.out_features, bias=new_embeddings.bias is not None,
                device="meta",
            )
            projection.weight, projection.bias = new_embeddings.weight, new_embeddings.bias
            new_embeddings = projection
        self.text_decoder.lm_head = new_embeddings
        self.text_decoder.config.vocab_size = new_embeddings.out_features

    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.LongTensor:
        r"""
        Captions `pixel_values`, continuing the prompt `input_ids` when one is given (all `GenerationMixin.generate`
        options apply). The processor closes every text with `[SEP]`, which the decoder only saw as end-of-caption, so
        a prompt ending in `[SEP]` loses it first, as in BLIP: `processor(images=image, text="a photo of")` continues
        "a photo of", and `text=""` (`[CLS] [SEP]`) captions from the bare start token, like no prompt at all.
        """
        self._fill_special_tokens()
        eos = self.generation_config.eos_token_id
        if input_ids is not None and input_ids.shape[1] > 1 and isinstance(eos, int):
            if bool((input_ids[:, -1] == eos).all()):
                input_ids = input_ids[:, :-1]
                attention_mask = attention_mask[:, :-1] if attention_mask is not None else None
        return super().generate(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, **kwargs)

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
        **kwargs,
    ) -> CausalLMOutputWithCrossAttentions:
        r"""
        Args:
            input_ids (`(B, L)`): `[CLS] caption [SEP]` (the `[CLS]` acts as the start token).
            pixel_values (`(B, C, H, W)` or `(B, T, C, H, W)`): Needed unless `cache` already holds the image keys.
            labels (`(B, L)`): Usually `input_ids` with padding set to -100; shifted inside, as in transformers.
            cache (`Cache`): Key/values from previous steps (generation).
            logits_to_keep (`int` or `torch.Tensor`): Project only the last N positions onto the vocabulary (0: all),
                or the given positions; `generate()` passes 1. Ignored when `labels` are given (the loss needs all).
        """
        if input_ids is None:
            raise ValueError("MMForConditionalGeneration needs input_ids (start with the [CLS] token).")
        image_hidden = None
        cache_ready = cache is not None and getattr(cache, "is_updated", {}).get(0, False)
        if pixel_values is not None and not cache_ready:
            _check_batch(input_ids=input_ids, pixel_values=pixel_values)
            image_hidden = self.mm.encode_image(pixel_values).last_hidden_state
        elif not cache_ready:
            raise ValueError("MMForConditionalGeneration needs pixel_values (no image keys are cached yet).")
        use_cache = use_cache if use_cache is not None else (labels is None and not self.training)
        if labels is not None:
            _check_lm_labels(labels, input_ids, self.config.text_config.vocab_size)
        decoded = self.text_decoder(
            input_ids,
            image_hidden,
            attention_mask,
            cache=cache,
            use_cache=use_cache,
            position_ids=position_ids,
            logits_to_keep=0 if labels is not None else logits_to_keep,
        )
        loss = causal_lm_loss(decoded.logits, labels) if labels is not None else None
        return CausalLMOutputWithCrossAttentions(loss=loss, logits=decoded.logits, cache=decoded.cache)
