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
"""Custom `pipeline()` tasks of a published MM repo: `visual-question-answering` and `image-text-retrieval`.

`mm publish` copies this file into the repo and lists both classes under `custom_pipelines` in `config.json`, so
`pipeline(task, model=<repo>, trust_remote_code=True)` loads them with `get_class_from_dynamic_module`. Self-contained
like the model code: imports only transformers. transformers 5 removed its built-in `visual-question-answering` task
(and refuses that name for a locally registered pipeline) and never had a retrieval one, so `import modeling_mm`
registers both locally as `mm-visual-question-answering` and `image-text-retrieval`: `pipeline(task,
model=<local folder>)` then works on any checkpoint folder, published or not.
"""

import functools
from typing import Any

from transformers import Pipeline
from transformers.image_utils import load_image


__all__ = ["MMImageTextRetrievalPipeline", "MMVisualQuestionAnsweringPipeline"]


class MMVisualQuestionAnsweringPipeline(Pipeline):
    r"""
    Answers a question about an image with an MM classifier head (`MMForVisualQuestionAnswering`): the answer
    vocabulary is `config.id2label`.

    ```python
    >>> vqa = pipeline("visual-question-answering", model="<repo>", trust_remote_code=True)
    >>> vqa(image, question="What color is the shape?", top_k=2)
    [{'answer': 'red', 'score': 0.93}, {'answer': 'teal', 'score': 0.02}]
    ```

    Scores are a softmax over the answers (the head trains with cross-entropy on answer ids), or independent sigmoids
    when `config.problem_type == "multi_label_classification"`; `function_to_apply` overrides the choice.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __call__(self, image: Any, question: str | None = None, **kwargs: Any) -> list[dict[str, Any]] | list[list]:
        """
        Args:
            image (`str`, `PIL.Image.Image`, `dict` or `list`): An image (path, URL or PIL image) with `question`, a
                `{"image": ..., "question": ...}` dict, or a list of either (then a list of answers per item).
            question (`str`, *optional*): The question; needed unless the inputs are dicts.
            top_k (`int`, *optional*, defaults to 5): Number of answers returned (at most `num_labels`).
            function_to_apply (`str`, *optional*): `"softmax"`, `"sigmoid"` or `"none"` (raw logits).
            timeout (`float`, *optional*): Seconds to wait for an image URL.

        Returns:
            `list[dict]`: `{"answer": str, "score": float}`, best first.
        """
        if isinstance(image, dict) or (isinstance(image, list) and image and isinstance(image[0], dict)):
            inputs = image
        elif question is None:
            raise ValueError("Pass a `question` with the image, or {'image': ..., 'question': ...} dicts.")
        elif isinstance(image, list):
            inputs = [{"image": item, "question": question} for item in image]
        else:
            inputs = {"image": image, "question": question}
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, top_k=None, function_to_apply=None, timeout=None, **kwargs):
        preprocess_params = {"timeout": timeout} if timeout is not None else {}
        postprocess_params = {}
        if top_k is not None:
            if not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
            postprocess_params["top_k"] = top_k
        if function_to_apply is not None:
            if function_to_apply not in ("softmax", "sigmoid", "none"):
                raise ValueError(
                    f"function_to_apply must be 'softmax', 'sigmoid' or 'none', got {function_to_apply!r}."
                )
            postprocess_params["function_to_apply"] = function_to_apply
        return preprocess_params, {}, postprocess_params

    def preprocess(self, inputs: dict[str, Any], timeout: float | None = None):
        if not isinstance(inputs, dict) or "image" not in inputs or "question" not in inputs:
            raise ValueError(f"Each input needs an 'image' and a 'question', got {inputs!r}.")
        image = load_image(inputs["image"], timeout=timeout)
        return self.processor(images=[image], text=[inputs["question"]], return_tensors="pt").to(self.dtype)

    def _forward(self, model_inputs):
        return {"logits": self.model(**model_inputs).logits}

    def postprocess(self, model_outputs, top_k: int = 5, function_to_apply: str | None = None) -> list[dict[str, Any]]:
        logits = model_outputs["logits"][0].float()  # (num_labels,)
        if function_to_apply is None:
            multi_label = getattr(self.model.config, "problem_type", None) == "multi_label_classification"
            function_to_apply = "sigmoid" if multi_label else "softmax"
        if function_to_apply == "softmax":
            scores = logits.softmax(-1)
        elif function_to_apply == "sigmoid":
            scores = logits.sigmoid()
        else:
            scores = logits
        values, ids = scores.topk(min(top_k, scores.shape[0]))
        id2label = self.model.config.id2label
        return [{"answer": id2label[i], "score": v} for v, i in zip(values.tolist(), ids.tolist())]


class MMImageTextRetrievalPipeline(Pipeline):
    r"""
    Ranks candidate texts for an image, or candidate images for a text, with an MM model trained for retrieval
    (late or hybrid fusion): ITC cosine similarity over all candidates, then, for hybrid models, ITM re-scoring of the
    `rerank_top_k` best (ALBEF's retrieval inference). Re-scored candidates get `1 + p(match)`, so they rank above
    the rest; the other scores are cosines in [-1, 1].

    ```python
    >>> retriever = pipeline("image-text-retrieval", model="<repo>", trust_remote_code=True)
    >>> retriever(image, candidate_texts=["a red circle", "a blue triangle"])
    [{'text': 'a red circle', 'index': 0, 'score': 1.97}, {'text': 'a blue triangle', 'index': 1, 'score': 1.02}]
    >>> retriever("a red circle", candidate_images=[image_a, image_b], top_k=1)
    [{'index': 0, 'score': 1.97}]
    ```
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __call__(
        self,
        inputs: Any,
        candidate_texts: list[str] | None = None,
        candidate_images: list[Any] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """
        Args:
            inputs: The query: an image (path, URL or PIL image) with `candidate_texts`, or a text with
                `candidate_images`; a list of queries returns one ranking per query.
            candidate_texts (`list[str]`): Texts to rank for an image query.
            candidate_images (`list`): Images to rank for a text query.
            top_k (`int`, *optional*): Return only the best `top_k` candidates (default: all).
            rerank_top_k (`int`, *optional*, defaults to 16): Candidates re-scored by ITM (hybrid); 0 = ITC only.
            timeout (`float`, *optional*): Seconds to wait for an image URL.

        Returns:
            `list[dict]`, best first: `{"text", "index", "score"}` for texts, `{"index", "score"}` for images (the
            index into `candidate_images`).
        """
        if (candidate_texts is None) == (candidate_images is None):
            raise ValueError("Pass exactly one of `candidate_texts` (image query) or `candidate_images` (text query).")
        candidates = candidate_texts if candidate_texts is not None else candidate_images
        if not isinstance(candidates, (list, tuple)) or len(candidates) == 0:
            raise ValueError("The candidates must be a non-empty list.")
        return super().__call__(inputs, candidate_texts=candidate_texts, candidate_images=candidate_images, **kwargs)

    def _sanitize_parameters(
        self, candidate_texts=None, candidate_images=None, top_k=None, rerank_top_k=None, timeout=None, **kwargs
    ):
        preprocess_params = {"candidate_texts": candidate_texts, "candidate_images": candidate_images}
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        forward_params = {}
        if rerank_top_k is not None:
            if not isinstance(rerank_top_k, int) or rerank_top_k < 0:
                raise ValueError(f"rerank_top_k must be a non-negative integer, got {rerank_top_k!r}.")
            forward_params["rerank_top_k"] = rerank_top_k
        postprocess_params = {"top_k": top_k} if top_k is not None else {}
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, inputs: Any, candidate_texts=None, candidate_images=None, timeout: float | None = None):
        if candidate_texts is not None:
            images, texts = [load_image(inputs, timeout=timeout)], list(candidate_texts)
        else:
            if not isinstance(inputs, str):
                raise ValueError(f"A query for candidate_images must be a text, got {type(inputs).__name__}.")
            images, texts = [load_image(image, timeout=timeout) for image in candidate_images], [inputs]
        model_inputs = dict(self.processor(text=texts, return_tensors="pt"))
        model_inputs["pixel_values"] = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.dtype)
        model_inputs["query"] = "image" if candidate_texts is not None else "text"
        model_inputs["candidate_texts"] = texts if candidate_texts is not None else None
        return model_inputs

    def _rank_texts(self):
        # `pt` is AutoModelForPreTraining (transformers has no Auto class for retrieval), i.e. `MMForPreTraining`: it
        # holds the towers, projections and ITM head that `MMForImageTextRetrieval.rank_texts` reads (`mm`,
        # `itm_head`), so that method runs on it unchanged.
        method = getattr(self.model, "rank_texts", None)
        if method is not None:
            return method
        # Relative, so a remote-code folder's copy of the heads is loaded with this file.
        from .modeling_mm_heads import MMForImageTextRetrieval

        return functools.partial(MMForImageTextRetrieval.rank_texts, self.model)

    def _forward(self, model_inputs, rerank_top_k: int = 16):
        query = model_inputs.pop("query")
        candidate_texts = model_inputs.pop("candidate_texts")
        pixel_values = model_inputs["pixel_values"]
        input_ids, attention_mask = model_inputs["input_ids"], model_inputs["attention_mask"]
        rerank = rerank_top_k > 0 and self.model.config.fusion in ("hybrid", "coattention")
        if query == "image" and rerank:
            scores = self._rank_texts()(pixel_values, input_ids, attention_mask, top_k=rerank_top_k)[0]  # (T,)
        else:
            mm = self.model.mm
            # Cosines of the L2-normalised embeddings: (I, D) @ (D, T) -> one row (image query) or column (text query).
            similarity = mm.embed_image(pixel_values) @ mm.embed_text(input_ids, attention_mask).t()
            scores = similarity[0] if query == "image" else similarity[:, 0]
            if rerank:
                # Text query: ITM re-scores the best images; rank_texts over them and the one text does exactly that.
                top = scores.topk(min(rerank_top_k, scores.shape[0])).indices
                rescored = self._rank_texts()(pixel_values[top], input_ids, attention_mask, top_k=1)[:, 0]
                scores = scores.scatter(0, top, rescored)
        return {"scores": scores, "candidate_texts": candidate_texts}

    def postprocess(self, model_outputs, top_k: int | None = None) -> list[dict[str, Any]]:
        scores = model_outputs["scores"].float()
        texts = model_outputs["candidate_texts"]
        order = scores.argsort(descending=True).tolist()[: top_k or None]
        if texts is not None:
            return [{"text": texts[i], "index": i, "score": float(scores[i])} for i in order]
        return [{"index": i, "score": float(scores[i])} for i in order]
