"""Task heads of the MM family: VQA, image+text classification, retrieval, captioning / generative VQA. (Pretraining
is in `modeling_mm_pretraining.py`; retrieval trains with its objective methods.)

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
from .losses import causal_lm_loss, fused_linear_cross_entropy, next_token_targets, token_cross_entropy
from .modeling_mm import MMModel, MMOutput, MMPreTrainedModel, MMTextDecoder, _flag, visual_input
from .modeling_mm_pretraining import (
    MMForPreTraining,
    _as_projection,
    _check_batch,
    _check_lm_labels,
    _loss_chunk,
    _text_act_eps,
)


__all__ = [
    "MMCausalLMOutput",
    "MMForConditionalGeneration",
    "MMForImageTextClassification",
    "MMForImageTextRetrieval",
    "MMForVisualQuestionAnswering",
    "MMImageTextClassifierOutput",
    "MMRetrievalOutput",
]


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
        logits (`torch.FloatTensor` of shape `(B, L, V)`): Next-token scores (the last `logits_to_keep` positions);
            `None` when the loss was fused with the projection (`config.loss_chunk_size`, with labels).
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
        # With labels and `config.loss_chunk_size`, the vocabulary projection happens inside the fused loss instead.
        chunk = _loss_chunk(self.config, self.text_decoder.lm_head) if scored else None
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
            compute_logits=chunk is None,
        )
        loss = None
        if chunk is not None:
            targets = shift_labels if shift_labels is not None else next_token_targets(labels)  # (B, L)
            hidden = decoded.last_hidden_state  # (B, L, D)
            head = self.text_decoder.lm_head
            loss = fused_linear_cross_entropy(
                hidden.reshape(-1, hidden.shape[-1]), head.weight, head.bias, targets.reshape(-1), chunk
            )
        elif shift_labels is not None:
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
