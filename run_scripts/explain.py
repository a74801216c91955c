"""`mm explain`: grounding heatmaps over image patches, per-token relevance, retrieval galleries.

Under `torchrun` / `accelerate launch` a gallery's candidates are scored in blocks, one per process, and gathered
(the same ranking as one process); a single heatmap is computed by the main process alone.

    mm explain --model_name_or_path outputs/pretrain --image shape.png --text "a blue circle" --output heatmap.png
    mm explain --model_name_or_path outputs/pretrain --gallery --text "a blue circle" --output gallery.png

The methods (gradcam, rollout, similarity, itc_gradcam, occlusion) live in `evaluation.explain`.
"""

from dataclasses import dataclass, field
import os

from evaluation.distributed import is_main_process, resolve_device
from evaluation.explain import (
    METHOD_FUSIONS,
    _as_pil,
    load_explainer,
    relevance_map,
    retrieval_gallery,
    save_overlay,
)
from training import parse_args, setup_logging


__all__ = ["ExplainArguments", "main"]


@dataclass
class ExplainArguments:
    model_name_or_path: str = field(metadata={"help": "MM checkpoint folder (e.g. outputs/pretrain) or Hub id."})
    device: str | None = field(
        default=None, metadata={"help": "Where the model runs, e.g. cuda, mps, cpu (default: the accelerator if present)."}
    )
    text: str | None = field(default=None, metadata={"help": "Text to ground (heatmap) or to query with (gallery)."})
    image: str | None = field(default=None, metadata={"help": "Image file to explain, or the gallery's query image."})
    output: str = field(default="heatmap.png", metadata={"help": "Output PNG."})
    method: str | None = field(
        default=None,
        metadata={
            "help": "gradcam (hybrid), rollout (early), similarity, itc_gradcam or occlusion (late, hybrid); default "
            "per fusion.",
            "choices": sorted(METHOD_FUSIONS),
        },
    )
    layer: int | None = field(default=-1, metadata={"help": "Gradcam: fusion layer (default the last)."})
    keep_size: bool = field(
        default=False,
        metadata={
            "help": "Feed the image at its own size (cropped to multiples of the patch size) instead of resizing it to "
            "the processor's: objects keep their trained scale, e.g. in a wide two-object composite."
        },
    )
    gallery: bool = field(
        default=False,
        metadata={
            "help": "Retrieval gallery instead of a heatmap: --text ranks the easy-VQA test images; --image ranks the "
            "24 easy-VQA class captions."
        },
    )
    k: int = field(default=5, metadata={"help": "Gallery: how many results to show."})
    max_candidates: int | None = field(default=None, metadata={"help": "Gallery: rank only the first N test images."})


def main(args: list[str] | None = None) -> str:
    (explain_args,) = parse_args((ExplainArguments,), args)
    setup_logging()
    model, processor = load_explainer(explain_args.model_name_or_path)
    model.to(resolve_device(explain_args.device))
    if explain_args.gallery:
        from processing.data import EASY_VQA_COLORS, EASY_VQA_SHAPES, load_easy_vqa

        if explain_args.text is not None:
            test = load_easy_vqa(split="test", view="images")
            if explain_args.max_candidates is not None:
                test = test.select(range(min(explain_args.max_candidates, len(test))))
            query, candidates = explain_args.text, list(test["image"])
        elif explain_args.image is not None:
            query = _as_pil(explain_args.image)
            candidates = [f"a {color} {shape}" for color in EASY_VQA_COLORS for shape in EASY_VQA_SHAPES]
        else:
            raise SystemExit("--gallery needs a --text (ranks test images) or an --image (ranks class captions).")
        ranked = retrieval_gallery(model, processor, query, candidates, k=explain_args.k, path=explain_args.output)
        if not is_main_process():  # under a launcher every process ranked its block; the main one reports
            return explain_args.output
        for rank, (index, score) in enumerate(ranked, start=1):
            label = candidates[index] if isinstance(candidates[index], str) else f"test image {index}"
            print(f"#{rank}: {label}  score {score:.4f}")
    else:
        if explain_args.image is None or explain_args.text is None:
            raise SystemExit("A heatmap needs --image and --text (or pass --gallery).")
        if not is_main_process():  # one image's map is one process's work: the others have nothing to do
            return explain_args.output
        image = _as_pil(explain_args.image)
        image_size = None
        if explain_args.keep_size:
            patch = model.config.vision_config.patch_size
            width, height = image.size
            image = image.crop((0, 0, width - width % patch, height - height % patch))
            image_size = (image.height, image.width)
        patch_map, tokens = relevance_map(
            model, processor, image, explain_args.text, explain_args.method, explain_args.layer, image_size
        )
        save_overlay(image, patch_map, explain_args.output, tokens, title=explain_args.text)
        print("token relevance: " + ", ".join(f"{t} {s:.2f}" for t, s in tokens))
    print(f"Wrote {os.path.abspath(explain_args.output)}")
    return explain_args.output


if __name__ == "__main__":
    main()
