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
"""Processor pairing `MMImageProcessor` with the text tower's standard WordPiece tokenizer (`BertTokenizerFast`).

Self-contained like the model code: imports only transformers, torch, numpy and the sibling image processor.
"""

import os
from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_processing_mm import MMImageProcessor


__all__ = ["MMProcessor"]


# Token budget of a text ([CLS] and [SEP] included) when no `max_length` is given: the processor's and the tools' default.
DEFAULT_MAX_LENGTH = 32


class MMProcessor(ProcessorMixin):
    r"""
    Constructs a multimodal processor: [`MMImageProcessor`] for images/videos and a WordPiece tokenizer for text.

    Calling it returns exactly the model inputs: `input_ids`, `attention_mask` (when `text` is given) and
    `pixel_values` (when `images` or `videos` are given). Images and texts are paired one to one.

    Args:
        image_processor ([`MMImageProcessor`]):
            The image processor.
        tokenizer ([`BertTokenizerFast`]):
            The text tower's tokenizer.
        max_length (`int`, *optional*, defaults to 32):
            Token budget used when truncating (or padding to `"max_length"`) without an explicit `max_length`.
    """

    def __init__(
        self, image_processor: MMImageProcessor, tokenizer: Any, max_length: int = DEFAULT_MAX_LENGTH, **kwargs
    ):
        if not isinstance(max_length, int) or max_length < 2:
            # [CLS] and [SEP] alone take two tokens.
            raise ValueError(f"`max_length` must be an int >= 2, got {max_length}.")
        self.max_length = max_length
        super().__init__(image_processor, tokenizer, **kwargs)

    @property
    def unused_input_names(self) -> list[str]:
        # BERT tokenizers also produce `token_type_ids`; the model takes single segments only, so it is never returned.
        return ["token_type_ids"]

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        videos: Any = None,
        *,
        padding: bool | str = "longest",
        truncation: bool | str | None = True,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        input_data_format: str | None = None,
        **image_kwargs,
    ) -> BatchFeature:
        """
        Tokenize `text` and preprocess `images` or `videos`.

        Args:
            images (*optional*):
                One image or a batch; see [`MMImageProcessor`].
            text (`str` or `list[str]`, *optional*):
                One text or a batch. Each must contain non-whitespace characters.
            videos (*optional*):
                One video or a batch; `pixel_values` is then `(B, T, 3, H, W)`.
            padding (`bool` or `str`, *optional*, defaults to `"longest"`):
                As in transformers tokenizers: `"longest"`/`True`, `"max_length"` or `False`.
            truncation (`bool` or `str`, *optional*, defaults to `True`):
                As in transformers tokenizers.
            max_length (`int`, *optional*):
                Defaults to `self.max_length` whenever truncating or padding to `"max_length"`.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                `"pt"`, `"np"` or `None` (Python lists for the text; `pixel_values` stays a tensor).
            input_data_format (`str`, *optional*):
                Channel layout for ambiguous array inputs.
            image_kwargs:
                Per-call overrides forwarded to [`MMImageProcessor.preprocess`] (e.g. `size`, `num_frames`).

        Returns:
            [`BatchFeature`] with `input_ids`, `attention_mask` and/or `pixel_values`.
        """
        if images is None and text is None and videos is None:
            raise ValueError("MMProcessor needs at least one of `images`, `text` or `videos`.")
        if images is not None and videos is not None:
            raise ValueError("Pass either `images` or `videos`, not both: both would fill `pixel_values`.")

        # An empty text is allowed next to an image or video: it is the empty captioning prompt (`[CLS] [SEP]`).
        allow_empty = images is not None or videos is not None
        texts = self._validate_text(text, allow_empty=allow_empty) if text is not None else None
        visual_kind = "videos" if videos is not None else "images"
        num_visual = None
        if images is not None or videos is not None:
            num_visual = MMImageProcessor.num_items(images=images, videos=videos)
        if texts is not None and num_visual is not None and num_visual != len(texts):
            # Checked before any decoding so a mis-zipped batch never reaches the model.
            raise ValueError(
                f"Got {num_visual} {visual_kind} and {len(texts)} texts. MMProcessor pairs them one to one, so pass "
                f"equal numbers, or leave one side out (e.g. encode one image and several texts in separate calls)."
            )

        data: dict[str, Any] = {}
        if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
            raise ValueError(f"`max_length` must be an int >= 2 ([CLS] and [SEP]), got {max_length!r}.")
        if texts is not None:
            if max_length is None and (truncation not in (None, False, "do_not_truncate") or padding == "max_length"):
                max_length = self.max_length
            encoding = self.tokenizer(
                texts,
                padding=padding,
                truncation=truncation,
                max_length=max_length,
                return_token_type_ids=False,
                return_tensors=return_tensors,
            )
            if not allow_empty:
                # Zero-width and control characters are dropped by the tokenizer: such a text is as empty as "".
                specials = self.tokenizer.num_special_tokens_to_add()
                for i, mask in enumerate(encoding["attention_mask"]):
                    if int(sum(mask)) <= specials:
                        raise ValueError(
                            f"Text at batch index {i} has no tokens once tokenized (only whitespace, control or "
                            f"zero-width characters): {texts[i]!r}."
                        )
            data["input_ids"] = encoding["input_ids"]
            data["attention_mask"] = encoding["attention_mask"]
        if num_visual is not None:
            pixel_values = self.image_processor(
                images, videos=videos, input_data_format=input_data_format, return_tensors="pt", **image_kwargs
            )["pixel_values"]
            data["pixel_values"] = pixel_values.numpy() if return_tensors == "np" else pixel_values
        return BatchFeature(data=data)

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

    @classmethod
    def _get_arguments_from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, processor_dict: dict[str, Any] | None = None, **kwargs
    ) -> list[Any]:
        # transformers 5.x loads the primary image processor through `AutoImageProcessor`, which only resolves
        # classes shipped with transformers or registered with `AutoImageProcessor.register(...)`. We know our class,
        # so load it directly: `MMProcessor.from_pretrained(folder)` then works with or without Auto registration.
        # The tokenizer keeps the standard path (`AutoTokenizer`, which knows `BertTokenizer`).
        kwargs = dict(kwargs)
        subfolder = kwargs.pop("subfolder", "")
        image_processor = MMImageProcessor.from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        tokenizer = cls._load_tokenizer_from_pretrained(
            "tokenizer", pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        return [image_processor, tokenizer]
