"""A Gradio app for a published MM repo: a Hugging Face Space's `app.py`.

`mm publish --space_dir <dir>` copies this file there as `app.py` with `MODEL_ID`, `TABS` and `TITLE` filled in, next
to a `README.md` with the Space's front matter, a `requirements.txt` and a small image `gallery/`; `mm space --model
<folder>` runs it on any published folder. Self-contained like the repo's code: it imports only gradio, transformers,
torch, numpy and PIL, and loads the model with `pipeline(..., trust_remote_code=True)`, so it runs where this package
is not installed.

    python app.py                                   # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / _PORT change it)
    MM_SPACE_MODEL=me/mm-vqa MM_SPACE_REVISION=<commit> python app.py

Tabs (those the checkpoint serves, see `publishing.space.space_tabs`): a question about the image (VQA, top-k answers
with scores), zero-shot labels from a comma-separated list, a caption, text-to-image search over the gallery, and the
occlusion heatmap of a text on the image. Bad input (no image, an empty question, a file that is not an image, an
image too large) is answered with a message in the page, never a stack trace.
"""

from collections.abc import Callable
import functools
import logging
import os
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports leave the machine

import gradio as gr
import numpy as np
import PIL.Image
import torch
from transformers import AutoProcessor, pipeline


logger = logging.getLogger(__name__)

__all__ = [
    "TAB_TITLES",
    "MMSpace",
    "build_demo",
    "gallery_images",
    "image_upload",
    "itc_occlusion",
    "launch",
    "main",
    "overlay",
    "read_image",
    "vqa_logits",
    "vqa_occlusion",
]

# Filled in by `mm publish --space_dir`; the environment variables MM_SPACE_MODEL and MM_SPACE_REVISION override the
# first two. Pin the revision to a commit you have read: `trust_remote_code=True` runs the repo's Python code.
MODEL_ID: str | None = None
REVISION: str | None = None
TABS: list[str] = []
TITLE: str = "MM model"

GALLERY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gallery")
TAB_TITLES: dict[str, str] = {
    "vqa": "Ask a question",
    "zero_shot": "Zero-shot labels",
    "caption": "Caption",
    "search": "Search the gallery",
    "heatmap": "Heatmap",
}
IMAGE_TYPES = "PNG, JPEG, WebP, GIF or BMP"
MAX_PIXELS = 4096 * 4096  # larger images are refused before they are decoded (a 16-Mpx image is ~50 MB in RGB)
MAX_FILE_SIZE = "10mb"  # uploads above this are refused by Gradio itself
MAX_LABELS = 64
MAX_TEXT_CHARS = 500
OCCLUSION_CHUNK = 64  # occluded copies of the image per forward pass
HEATMAP_SIZE = 256  # pixels of the shown heatmap's longer side
# Small images (easy-VQA's are 64x64) are shown filling their box, with sharp pixels.
CSS = (
    "#image-input img, #heatmap-image img "
    "{width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated}"
)
# System fonts only: the page loads nothing from the internet.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "Consolas", "monospace"]
)


# ----------------------------------------------------------------------------------------------------------------------
# Input checks: each failure is a `gr.Error`, shown in the page as a message
# ----------------------------------------------------------------------------------------------------------------------


def _message(text: str) -> gr.Error:
    # The user's input was at fault, not the server: no traceback in its log either.
    return gr.Error(text, print_exception=False)


def _too_large(size: str) -> gr.Error:
    return _message(
        f"The image is {size} pixels; this app takes at most {MAX_PIXELS / 1e6:.0f} megapixels. Resize it first."
    )


def _not_an_image() -> gr.Error:
    return _message(f"That file is not an image this app can read. Upload a {IMAGE_TYPES} file.")


def read_image(path: str | None) -> PIL.Image.Image:
    """The uploaded image as RGB, checked: present, an image, at most `MAX_PIXELS` (checked before decoding).

    Args:
        path (`str`, *optional*): The file Gradio saved the upload to (`None` when nothing was uploaded).

    Raises:
        `gr.Error`: With a message for the page.
    """
    if path is None:
        raise _message(f"Upload an image first ({IMAGE_TYPES}).")
    try:
        with PIL.Image.open(path) as image:
            width, height = image.size  # read from the header: nothing decoded yet
            if width * height <= MAX_PIXELS:
                return image.convert("RGB")
    except PIL.Image.DecompressionBombError:
        raise _too_large("far more than 100 million") from None
    except (PIL.UnidentifiedImageError, OSError, ValueError):
        raise _not_an_image() from None
    raise _too_large(f"{width}x{height}")


def _text(value: str | None, message: str) -> str:
    value = (value or "").strip()
    if not value:
        raise _message(message)
    if len(value) > MAX_TEXT_CHARS:
        raise _message(f"The text is {len(value)} characters long; keep it under {MAX_TEXT_CHARS}.")
    return value


def _readable_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turns any unexpected exception of a handler into a one-line message in the page (the traceback goes to the
    server log only)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:
            logger.exception("%s failed", fn.__name__)
            message = f"The model could not process this input ({type(err).__name__}: {err})."
            raise gr.Error(message, print_exception=False) from None  # logged above

    return wrapper


def image_upload(**kwargs: Any) -> gr.Image:
    """A `gr.Image` whose upload checks end in a readable message: Gradio opens the file before any handler runs, and
    would answer a text file named `.png` or a decompression bomb with a bare "Error". The check wraps the instance's
    `preprocess` (a subclass would do, but Gradio writes a `.pyi` stub next to the file of every component class).

    Args:
        kwargs: `gr.Image` arguments.
    """
    image = gr.Image(**kwargs)
    preprocess = image.preprocess

    def checked(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except gr.Error:  # Gradio's own messages (an SVG file) are readable already; gr.Error is a ValueError
            raise
        except PIL.Image.DecompressionBombError:
            raise _too_large("far more than 100 million") from None
        except (PIL.UnidentifiedImageError, OSError, ValueError):
            raise _not_an_image() from None

    image.preprocess = checked
    return image


# ----------------------------------------------------------------------------------------------------------------------
# Occlusion heatmaps, from the model's public methods
# ----------------------------------------------------------------------------------------------------------------------


def _drop_one_patch(num_patches: int) -> torch.Tensor:
    """Row i keeps every patch but patch i: `(N, N-1)` indices for the vision tower's `image_keep_indices`."""
    keep = ~torch.eye(num_patches, dtype=torch.bool)
    return torch.arange(num_patches).expand(num_patches, -1)[keep].view(num_patches, num_patches - 1)


def _occlude(score: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], pixel_values: torch.Tensor,
             patch_size: int) -> tuple[torch.Tensor, float]:
    """Zeiler & Fergus (2014) occlusion the ViT way: drop one patch token at a time (the FLIP keep-index path, not a
    grey patch the model never saw) and record how much `score` falls. Returns the `(H_p, W_p)` falls and the score of
    the whole image; a fall is negative where removing the patch raises the score."""
    grid_h, grid_w = pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size
    full = float(score(pixel_values, None)[0])
    keep = _drop_one_patch(grid_h * grid_w)
    falls = []
    for rows in keep.split(OCCLUSION_CHUNK):
        falls.append(full - score(pixel_values.expand(len(rows), -1, -1, -1), rows))  # (chunk,)
    return torch.cat(falls).view(grid_h, grid_w), full


@torch.no_grad()
def itc_occlusion(model: Any, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """How much the ITC cosine of the image with the text falls when each patch is dropped (`mm explain --method
    occlusion`'s map).

    Args:
        model: A late or hybrid MM model with `embed_image(pixel_values, image_keep_indices)` and
            `embed_text` (the zero-shot pipeline's `MMModel`).
        pixel_values (`torch.FloatTensor` of shape `(1, C, H, W)`), input_ids, attention_mask (`(1, L)`): One pair.

    Returns:
        The `(H_p, W_p)` falls, and the cosine of the whole image with the text.
    """
    text = model.embed_text(input_ids, attention_mask)  # (1, P), L2-normalised

    def cosine(pixels: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        return (model.embed_image(pixels, image_keep_indices=keep) * text).sum(-1)  # (B,)

    return _occlude(cosine, pixel_values, model.config.vision_config.patch_size)


def vqa_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
               image_keep_indices: torch.Tensor | None = None) -> torch.Tensor:
    """`(B, num_answers)` logits of an `MMForVisualQuestionAnswering` with only `image_keep_indices` of the image's
    patches seen: its joint representation (late: both towers' pooled states side by side; hybrid: the fused [CLS])
    through its classifier. Without indices, equal to `model(...).logits`. A batch of one question with B images of
    kept patches broadcasts the question."""
    mm, batch = model.mm, pixel_values.shape[0]
    input_ids, attention_mask = input_ids.expand(batch, -1), attention_mask.expand(batch, -1)
    if model.config.fusion == "late":
        text = mm.encode_text(input_ids, attention_mask, pooled_only=True).pooler_output  # (B, D_t)
        image = mm.encode_image(pixel_values, image_keep_indices, pooled_only=True).pooler_output  # (B, D_v)
        pooled = torch.cat([text, image], dim=-1)
    else:
        pooled = mm(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                    image_keep_indices=image_keep_indices).pooler_output  # (B, D_t)
    return model.classifier(pooled)


@torch.no_grad()
def vqa_occlusion(model: Any, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """How much the probability of the model's answer to the question falls when each patch is dropped.

    Returns:
        The `(H_p, W_p)` falls, the answer's probability on the whole image, and the answer id.
    """
    answer = int(vqa_logits(model, input_ids, attention_mask, pixel_values)[0].argmax())

    def probability(pixels: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        return vqa_logits(model, input_ids, attention_mask, pixels, keep).softmax(-1)[:, answer]  # (B,)

    falls, full = _occlude(probability, pixel_values, model.config.vision_config.patch_size)
    return falls, full, answer


def overlay(image: PIL.Image.Image, falls: torch.Tensor | np.ndarray, size: int = HEATMAP_SIZE) -> PIL.Image.Image:
    """The image (squashed to a square, as the model saw it) with the signed map over it: red where dropping the patch
    lowers the score (evidence for the text), blue where it raises it; opacity grows with the fall."""
    values = np.asarray(falls, dtype=np.float32)
    scale = float(np.abs(values).max())
    values = values / scale if scale > 0 else values
    upsampled = np.asarray(PIL.Image.fromarray(values, mode="F").resize((size, size), PIL.Image.BILINEAR))
    base = np.asarray(image.convert("RGB").resize((size, size), PIL.Image.BILINEAR), dtype=np.float32)
    colour = np.where(upsampled[..., None] >= 0, [220.0, 30.0, 30.0], [30.0, 60.0, 220.0])  # (S, S, 3)
    alpha = 0.65 * np.abs(upsampled)[..., None]
    return PIL.Image.fromarray((base * (1 - alpha) + colour * alpha).round().astype(np.uint8))


# ----------------------------------------------------------------------------------------------------------------------
# The model and the handlers the tabs call
# ----------------------------------------------------------------------------------------------------------------------


def _first(value: Any) -> Any:
    while isinstance(value, list):
        value = value[0]
    return value


class MMSpace:
    """The published model's pipelines, loaded once, and the functions behind the tabs.

    Args:
        model_id (`str`): A Hub repo id or a local published folder.
        tabs (`list[str]`): Keys of `TAB_TITLES`; only their pipelines are loaded.
        revision (`str`, *optional*): The repo's commit or branch.
        gallery (`list[str]`): Image files the search tab ranks.
    """

    def __init__(self, model_id: str, tabs: list[str], revision: str | None = None, gallery: list[str] = ()):
        unknown = [tab for tab in tabs if tab not in TAB_TITLES]
        if unknown or not tabs:
            raise ValueError(f"tabs must be a non-empty list of {list(TAB_TITLES)}, got {tabs!r}.")
        self.model_id, self.tabs, self.gallery = model_id, list(tabs), list(gallery)
        if "search" in tabs and not self.gallery:
            raise ValueError("The search tab needs gallery images.")
        load = functools.partial(pipeline, model=model_id, revision=revision, trust_remote_code=True)
        self.vqa = load("visual-question-answering") if "vqa" in tabs else None
        # The heatmap explains the VQA answer of a VQA checkpoint, else the ITC similarity (the zero-shot model's).
        need_itc = "zero_shot" in tabs or ("heatmap" in tabs and self.vqa is None)
        self.zero_shot = load("zero-shot-image-classification") if need_itc else None
        self.captioner = load("image-text-to-text") if "caption" in tabs else None
        self.retriever = load("image-text-retrieval") if "search" in tabs else None
        self.labels = list(self.vqa.model.config.id2label.values()) if self.vqa is not None else []
        # The zero-shot pipeline splits the processor into tokenizer and image processor; the heatmap needs it whole.
        self.processor = (
            AutoProcessor.from_pretrained(model_id, revision=revision, trust_remote_code=True)
            if "heatmap" in tabs else None
        )

    @_readable_errors
    def answer(self, image_path: str | None, question: str | None, top_k: float = 3) -> dict[str, float]:
        """Top-k answers to the question, `{answer: score}`."""
        image = read_image(image_path)
        question = _text(question, "Type a question about the image, e.g. 'what color is the shape?'.")
        rows = self.vqa(image, question=question, top_k=int(top_k))
        return {row["answer"]: float(row["score"]) for row in rows}

    @_readable_errors
    def classify(self, image_path: str | None, labels: str | None, template: str | None = "a {}") -> dict[str, float]:
        """Zero-shot probabilities of the comma-separated labels, `{label: score}`."""
        image = read_image(image_path)
        names = [name.strip() for name in (labels or "").split(",") if name.strip()]
        if not names:
            raise _message("Type at least one label; separate labels with commas, e.g. 'red circle, blue triangle'.")
        if len(names) > MAX_LABELS:
            raise _message(f"{len(names)} labels; at most {MAX_LABELS} at a time.")
        template = (template or "").strip() or "{}"
        if "{}" not in template:
            raise _message("The template must contain {} where the label goes, e.g. 'a {}'.")
        rows = self.zero_shot(image, candidate_labels=names, hypothesis_template=template)
        return {row["label"]: float(row["score"]) for row in rows}

    @_readable_errors
    def caption(self, image_path: str | None, prompt: str | None = "") -> str:
        """A caption of the image, continuing `prompt` when one is given."""
        image = read_image(image_path)
        prompt = (prompt or "").strip()
        if len(prompt) > MAX_TEXT_CHARS:
            raise _message(f"The prompt is {len(prompt)} characters long; keep it under {MAX_TEXT_CHARS}.")
        return str(_first(self.captioner(images=image, text=prompt))["generated_text"])

    @_readable_errors
    def search(self, query: str | None, top_k: float = 4) -> list[tuple[str, str]]:
        """The gallery images that best match the text, best first, each with its score."""
        query = _text(query, "Type what to look for, e.g. 'a red circle'.")
        images = [PIL.Image.open(path).convert("RGB") for path in self.gallery]
        rows = self.retriever(query, candidate_images=images, top_k=int(top_k))
        return [(self.gallery[row["index"]], f"score {row['score']:.3f}") for row in rows]

    @_readable_errors
    def explain(self, image_path: str | None, text: str | None) -> tuple[PIL.Image.Image, str]:
        """The occlusion heatmap of the text on the image, and a line saying what it explains."""
        image = read_image(image_path)
        if self.vqa is not None:
            text = _text(text, "Type a question: the heatmap shows which parts of the image its answer depends on.")
            inputs = self.processor(images=[image], text=[text], return_tensors="pt")
            falls, score, answer = vqa_occlusion(self.vqa.model, inputs["pixel_values"], inputs["input_ids"],
                                                 inputs["attention_mask"])
            what = f"the probability of the answer **{self.vqa.model.config.id2label[answer]}** ({score:.3f})"
        else:
            text = _text(text, "Type a text to find in the image, e.g. 'a red circle'.")
            inputs = self.processor(images=[image], text=[text], return_tensors="pt")
            falls, score = itc_occlusion(self.zero_shot.model, inputs["pixel_values"], inputs["input_ids"],
                                         inputs["attention_mask"])
            what = f"the similarity of the image with **{text}** (cosine {score:.3f})"
        return overlay(image, falls), (
            f"Occlusion: each patch is dropped in turn. Red patches lower {what} when dropped (evidence for it), blue "
            "ones raise it."
        )


# ----------------------------------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------------------------------


def gallery_images(folder: str = GALLERY_DIR) -> list[str]:
    """The image files in `folder`, sorted (none when it does not exist)."""
    if not os.path.isdir(folder):
        return []
    suffixes = (".png", ".jpg", ".jpeg", ".webp")
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder)) if name.lower().endswith(suffixes)]


def build_demo(space: MMSpace, title: str = TITLE) -> gr.Blocks:
    """The page: the uploaded image on the left, one tab per task on the right."""
    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\n`{space.model_id}`, loaded with `trust_remote_code=True`.")
        with gr.Row():
            with gr.Column(scale=1):
                image = image_upload(label="Image", type="filepath", image_mode=None,
                                     sources=["upload", "clipboard"], elem_id="image-input", height=300)
                if space.gallery:
                    gr.Examples(examples=[[path] for path in space.gallery[:6]], inputs=[image], label="Examples")
            with gr.Column(scale=2):
                with gr.Tabs():
                    if "vqa" in space.tabs:
                        with gr.Tab(TAB_TITLES["vqa"], id="vqa"):
                            question = gr.Textbox(label="Question", placeholder="what color is the shape?",
                                                  elem_id="vqa-question")
                            top_k = gr.Slider(1, max(1, min(10, len(space.labels))), value=min(3, len(space.labels)),
                                              step=1, label="Answers shown")
                            button = gr.Button("Answer", variant="primary", elem_id="vqa-button")
                            answers = gr.Label(label="Answers", elem_id="vqa-answers")
                            for trigger in (button.click, question.submit):
                                trigger(space.answer, [image, question, top_k], answers)
                    if "zero_shot" in space.tabs:
                        with gr.Tab(TAB_TITLES["zero_shot"], id="zero_shot"):
                            labels = gr.Textbox(label="Labels, comma-separated", elem_id="zero-shot-labels",
                                                value="red circle, blue triangle, green rectangle")
                            template = gr.Textbox(label="Template ({} is the label)", value="a {}")
                            button = gr.Button("Classify", variant="primary", elem_id="zero-shot-button")
                            scores = gr.Label(label="Labels", elem_id="zero-shot-scores")
                            button.click(space.classify, [image, labels, template], scores)
                    if "caption" in space.tabs:
                        with gr.Tab(TAB_TITLES["caption"], id="caption"):
                            prompt = gr.Textbox(label="Start of the caption (optional)", placeholder="a red")
                            button = gr.Button("Caption", variant="primary", elem_id="caption-button")
                            caption = gr.Textbox(label="Caption", interactive=False, elem_id="caption-text")
                            button.click(space.caption, [image, prompt], caption)
                    if "search" in space.tabs:
                        with gr.Tab(TAB_TITLES["search"], id="search"):
                            query = gr.Textbox(label="Find images of", placeholder="a red circle",
                                               elem_id="search-query")
                            count = gr.Slider(1, len(space.gallery), value=min(4, len(space.gallery)), step=1,
                                              label="Images shown")
                            button = gr.Button("Search", variant="primary", elem_id="search-button")
                            found = gr.Gallery(label="Best matches", columns=4, height="auto",
                                               elem_id="search-results")
                            button.click(space.search, [query, count], found)
                    if "heatmap" in space.tabs:
                        with gr.Tab(TAB_TITLES["heatmap"], id="heatmap"):
                            vqa = space.vqa is not None
                            text = gr.Textbox(label="Question (its answer is explained)" if vqa else "Text to find",
                                              placeholder="what color is the shape?" if vqa else "a red circle",
                                              elem_id="heatmap-text")
                            button = gr.Button("Explain", variant="primary", elem_id="heatmap-button")
                            heatmap = gr.Image(label="Occlusion heatmap", type="pil", interactive=False,
                                               elem_id="heatmap-image", height=300)
                            legend = gr.Markdown(elem_id="heatmap-legend")
                            button.click(space.explain, [image, text], [heatmap, legend])
    return demo


def launch(model_id: str, tabs: list[str], host: str | None = None, port: int | None = None,
           revision: str | None = None, gallery: list[str] = (), title: str = TITLE) -> None:
    """Loads the model and serves the page until interrupted (`host`/`port` default to Gradio's: 127.0.0.1:7860, or
    GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, which Spaces set)."""
    demo = build_demo(MMSpace(model_id, tabs, revision=revision, gallery=list(gallery)), title=title)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, max_file_size=MAX_FILE_SIZE, theme=THEME, css=CSS, ssr_mode=False,
        footer_links=[], quiet=True,
    )


def main() -> None:
    """`python app.py`: the model of `MODEL_ID` (or MM_SPACE_MODEL) with the tabs of `TABS`."""
    logging.basicConfig(level=logging.INFO)
    model_id = os.environ.get("MM_SPACE_MODEL") or MODEL_ID
    if not model_id:
        raise SystemExit("Set MM_SPACE_MODEL to a Hub repo id or a published folder (or run `mm space --model ...`).")
    launch(model_id, TABS, revision=os.environ.get("MM_SPACE_REVISION") or REVISION, gallery=gallery_images(),
           title=TITLE)


if __name__ == "__main__":
    main()
