# Copyright 2025 The mm-pretrain authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Processor pairing `MMImageProcessor` / `MMVideoProcessor` with the text tower's WordPiece tokenizer
(`BertTokenizerFast`), in the shape of transformers' BLIP processor.

Self-contained like the model code: imports only transformers, torch, numpy and the sibling processors.
"""

import os
from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack
from transformers.video_processing_utils import VideoProcessorMixin

from .image_processing_mm import MMImageProcessor, _flatten_images
from .video_processing_mm import MMVideoProcessor, _flatten_videos


__all__ = ["DEFAULT_MAX_LENGTH", "MMProcessor", "MMProcessorKwargs"]


# Token budget of a text ([CLS] and [SEP] included) when no `max_length` is given: the processor's and the tools' default.
DEFAULT_MAX_LENGTH = 32


class MMProcessorKwargs(ProcessingKwargs, total=False):
    """Call settings of `MMProcessor`, routed per modality (`text_kwargs`, `images_kwargs`, `videos_kwargs`)."""

    _defaults = {
        "text_kwargs": {
            "padding": "longest",
            "truncation": True,
            "max_length": DEFAULT_MAX_LENGTH,
            # The model takes single segments only, so BERT's segment ids are never returned.
            "return_token_type_ids": False,
        },
        "common_kwargs": {"return_tensors": "pt"},
    }


class MMProcessor(ProcessorMixin):
    r"""
    Constructs a multimodal processor: [`MMImageProcessor`] for images, [`MMVideoProcessor`] for videos and a
    WordPiece tokenizer for text.

    Calling it returns exactly the model inputs: `input_ids`, `attention_mask` (when `text` is given),
    `pixel_values` (when `images` are given) and `pixel_values_videos` (when `videos` are given). Images (and videos)
    are paired with texts one to one. Settings are routed as in transformers: flat keyword arguments go to every
    sub-processor that takes them, `text_kwargs` / `images_kwargs` / `videos_kwargs` to one, `common_kwargs` to all;
    text defaults (`padding="longest"`, `truncation=True`, `max_length`) are in [`MMProcessorKwargs`].

    Args:
        image_processor ([`MMImageProcessor`]):
            The image processor.
        tokenizer ([`BertTokenizerFast`]):
            The text tower's tokenizer.
        video_processor ([`MMVideoProcessor`], *optional*):
            The video processor; defaults to one with the image processor's settings.
        max_length (`int`, *optional*, defaults to 32):
            This processor's token budget when a call gives no `max_length` (replaces the class default).
    """

    valid_processor_kwargs = MMProcessorKwargs

    def __init__(
        self,
        image_processor: MMImageProcessor,
        tokenizer: Any,
        video_processor: MMVideoProcessor | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        **kwargs,
    ):
        self._check_max_length(max_length)
        self.max_length = max_length
        if video_processor is None:
            video_processor = MMVideoProcessor.from_image_processor(image_processor)
        super().__init__(image_processor, tokenizer, video_processor, **kwargs)

    @staticmethod
    def _check_max_length(max_length: Any) -> None:
        if not isinstance(max_length, int) or max_length < 2:
            # [CLS] and [SEP] alone take two tokens.
            raise ValueError(f"`max_length` must be an int >= 2, got {max_length!r}.")

    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> type:
        # transformers looks the expected base class up by name at its top level, where `VideoProcessorMixin` is only
        # exported alongside torchvision; check the video processor against the class itself.
        if argument_name == "video_processor":
            if not isinstance(argument, VideoProcessorMixin):
                raise TypeError(
                    f"Received a {type(argument).__name__} for argument video_processor, expected a video processor."
                )
            return VideoProcessorMixin
        return super().check_argument_for_proper_class(argument_name, argument)

    @property
    def unused_input_names(self) -> list[str]:
        return ["token_type_ids"]

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        videos: Any = None,
        **kwargs: Unpack[MMProcessorKwargs],
    ) -> BatchFeature:
        """
        Tokenize `text`, preprocess `images` and / or `videos`.

        Args:
            images (*optional*):
                One image or a batch; see [`MMImageProcessor`].
            text (`str` or `list[str]`, *optional*):
                One text or a batch. Each must contain non-whitespace characters (an empty string is allowed next
                to an image or video: the empty captioning prompt).
            videos (*optional*):
                One video or a batch; see [`MMVideoProcessor`].
            kwargs ([`MMProcessorKwargs`]):
                Tokenizer, image and video settings, flat or per modality.

        Returns:
            [`BatchFeature`] with `input_ids`, `attention_mask`, `pixel_values` and / or `pixel_values_videos`.
        """
        if images is None and text is None and videos is None:
            raise ValueError("MMProcessor needs at least one of `images`, `text` or `videos`.")
        visual = images is not None or videos is not None
        texts = self._validate_text(text, allow_empty=visual) if text is not None else None
        for kind, value, flatten in (("images", images, _flatten_images), ("videos", videos, _flatten_videos)):
            # Checked before any decoding so a mis-zipped batch never reaches the model.
            if value is not None and texts is not None and len(flatten(value)) != len(texts):
                raise ValueError(
                    f"Got {len(flatten(value))} {kind} and {len(texts)} texts. MMProcessor pairs them one to one, so "
                    "pass equal numbers, or leave one side out (e.g. encode one image and several texts in separate "
                    "calls)."
                )
        max_length = kwargs.get("max_length", kwargs.get("text_kwargs", {}).get("max_length"))
        if max_length is not None:
            self._check_max_length(max_length)

        encoding = super().__call__(images=images, text=texts, videos=videos, **kwargs)
        if texts is not None and not visual:
            # Zero-width and control characters are dropped by the tokenizer: such a text is as empty as "".
            specials = self.tokenizer.num_special_tokens_to_add()
            for i, mask in enumerate(encoding["attention_mask"]):
                if int(sum(mask)) <= specials:
                    raise ValueError(
                        f"Text at batch index {i} has no tokens once tokenized (only whitespace, control or "
                        f"zero-width characters): {texts[i]!r}."
                    )
        return encoding

    def _merge_kwargs(self, ModelProcessorKwargs: Any = None, tokenizer_init_kwargs: dict | None = None, **kwargs):
        merged = super()._merge_kwargs(ModelProcessorKwargs, tokenizer_init_kwargs, **kwargs)
        # The processor's own budget applies unless this call gives one. It also wins over the tokenizer's init kwargs,
        # which transformers ranks above the defaults: tokenizers loaded from a `tokenizer.json` with truncation
        # enabled carry its `max_length` there (128 for the default MiniLM tokenizer), which would silently replace
        # the budget the model was trained with.
        given = [kwargs, kwargs.get("text_kwargs", {}), kwargs.get("common_kwargs", {})]
        if not any("max_length" in source for source in given):
            merged["text_kwargs"]["max_length"] = self.max_length
        return merged

    @staticmethod
    def _validate_text(text: Any, allow_empty: bool = False) -> list[str]:
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)):
            # Any sequence of strings (e.g. a `datasets` column) is accepted; a dict, tensor or scalar is not.
            if isinstance(texts, (dict, bytes)) or not hasattr(texts, "__iter__") or not hasattr(texts, "__len__"):
                raise ValueError(f"`text` must be a string or a list of strings, got {type(text).__name__}.")
            texts = list(texts)
        if len(texts) == 0:
            raise ValueError("Got an empty batch of texts.")
        for i, sample in enumerate(texts):
            if not isinstance(sample, str):
                raise ValueError(f"Text at batch index {i} is a {type(sample).__name__}, expected a string.")
            if not sample.strip() and not (allow_empty and sample == ""):
                raise ValueError(f"Text at batch index {i} is empty or whitespace-only: {sample!r}.")
            try:
                sample.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(f"Text at batch index {i} is not valid Unicode (lone surrogate): {err}.") from None
        return list(texts)

    def post_process_image_text_to_text(
        self, generated_outputs: torch.Tensor | np.ndarray | list, skip_special_tokens: bool = True, **kwargs
    ) -> list[str]:
        """
        Decode generated token ids (e.g. from captioning `generate`) into strings.

        Args:
            generated_outputs (`torch.Tensor`, `np.ndarray` or `list`):
                `(batch_size, sequence_length)` or `(sequence_length,)` token ids.
            skip_special_tokens (`bool`, *optional*, defaults to `True`):
                Whether to drop [CLS], [SEP], [PAD], ...
            kwargs:
                Forwarded to the tokenizer's `batch_decode`.

        Returns:
            `list[str]`: one string per sequence.
        """
        ids = (
            generated_outputs.tolist()
            if isinstance(generated_outputs, (torch.Tensor, np.ndarray))
            else generated_outputs
        )
        if len(ids) > 0 and not isinstance(ids[0], (list, tuple)):
            ids = [ids]
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)
        return [t.strip() for t in texts]

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        # Saving a registered processor writes `auto_map` into the files and, as a side effect, onto `self`; drop the
        # latter so a processor equals itself reloaded (`from_pretrained` does not set it) and one built from parts.
        had_auto_map = "auto_map" in self.__dict__
        files = super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        if not had_auto_map:
            self.__dict__.pop("auto_map", None)
        return files

    @classmethod
    def _get_arguments_from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, processor_dict: dict[str, Any] | None = None, **kwargs
    ) -> list[Any]:
        # transformers loads sub-processors through the Auto classes, which resolve only classes shipped with
        # transformers or registered with them (and `AutoVideoProcessor` needs torchvision). We know our classes, so
        # load them directly: `MMProcessor.from_pretrained(folder)` then works with or without Auto registration. A
        # folder saved before the video processor existed gives it the image processor's settings
        # (`get_video_processor_dict` falls back to `preprocessor_config.json`). The tokenizer keeps the standard path.
        kwargs = dict(kwargs)
        subfolder = kwargs.pop("subfolder", "")
        image_processor = MMImageProcessor.from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        video_processor = MMVideoProcessor.from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        tokenizer = cls._load_tokenizer_from_pretrained(
            "tokenizer", pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        return [image_processor, tokenizer, video_processor]
