"""A Gradio Space next to a published repo: what `mm publish --space_dir` writes and `mm space` runs.

The Space folder holds `app.py` (a copy of `publishing/space_app.py` with the model id, its tabs and a title filled
in), `requirements.txt`, a `README.md` whose front matter configures the Space (`sdk: gradio`, `app_file: app.py`),
and `gallery/`, a few easy-VQA test images for the search tab and the examples. Which tabs exist follows
`publishing.hub.supported_tasks`: what the published repo's pipelines serve, plus the occlusion heatmap where the
model can drop patch tokens (late or hybrid fusion with the built-in vision tower) and explains a VQA answer or an ITC
similarity.
"""

import json
import os
import shutil

from training.trainer import fresh_output_dir

from .hub import supported_tasks


__all__ = [
    "GALLERY_SIZE",
    "GRADIO_VERSION",
    "SPACE_APP_PATH",
    "TAB_DESCRIPTIONS",
    "TASK_TABS",
    "default_gallery",
    "folder_tabs",
    "gallery_for",
    "render_app",
    "space_tabs",
    "write_space",
]

SPACE_APP_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "space_app.py")
# The Gradio release the app is tested with; the Space runs it (its front matter's `sdk_version`).
GRADIO_VERSION = "6.31.0"
GALLERY_SIZE = 8
# pipeline() task -> the app tab that serves it.
TASK_TABS: dict[str, str] = {
    "visual-question-answering": "vqa",
    "zero-shot-image-classification": "zero_shot",
    "image-text-to-text": "caption",
    "image-text-retrieval": "search",
}
# What each tab does, for the Space's README (the app's own tab titles are `space_app.TAB_TITLES`).
TAB_DESCRIPTIONS: dict[str, str] = {
    "vqa": "answers to a question about an uploaded image, with their scores",
    "zero_shot": "zero-shot labels from a comma-separated list",
    "caption": "a caption of the image",
    "search": "text-to-image search over a small bundled gallery",
    "heatmap": "the occlusion heatmap of a text on the image",
}
_REQUIREMENTS = """\
# gradio comes from the Space's sdk_version (README.md); locally: pip install gradio=={gradio} -r requirements.txt
torch>=2.6
transformers>=5.24,<6
safetensors>=0.4
numpy>=1.26
pillow>=10
"""


def space_tabs(tasks: list[str], fusion: str, builtin_vision: bool) -> list[str]:
    """The app's tabs for a model serving `tasks` (as `supported_tasks` lists them), in page order.

    Args:
        tasks (`list[str]`): The published repo's `pipeline()` tasks.
        fusion (`str`): `"early"`, `"late"`, `"hybrid"` or `"coattention"`.
        builtin_vision (`bool`): The vision tower is the built-in ViT (`mm_vision_model`), which can drop patch tokens;
            the occlusion heatmap needs it, and a late or hybrid model that explains a VQA answer or an ITC score.
    """
    tabs = [tab for task, tab in TASK_TABS.items() if task in tasks]
    if builtin_vision and fusion in ("late", "hybrid", "coattention") and ({"vqa", "zero_shot"} & set(tabs)):
        tabs.append("heatmap")
    return tabs


def _weight_names(folder: str) -> set[str]:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            return set(json.load(f)["weight_map"])
    from safetensors import safe_open

    with safe_open(os.path.join(folder, "model.safetensors"), framework="pt") as f:
        return set(f.keys())


def folder_tabs(folder: str) -> list[str]:
    """`space_tabs` of a published (or saved) model folder, read from its `config.json` and weight names."""
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    if "fusion" not in config:
        raise SystemExit(f"{folder} does not hold an MM model (its config.json has no 'fusion').")
    architecture = (config.get("architectures") or ["MMModel"])[0]
    tasks = supported_tasks(architecture, config["fusion"], _weight_names(folder))
    builtin = (config.get("vision_config") or {}).get("model_type", "mm_vision_model") == "mm_vision_model"
    return space_tabs(tasks, config["fusion"], builtin)


def default_gallery(count: int = GALLERY_SIZE) -> list[str]:
    """The first `count` easy-VQA test images (needs the `demo` extra)."""
    from processing.data import easy_vqa_data_dir

    folder = os.path.join(easy_vqa_data_dir(), "test", "images")
    return [os.path.join(folder, f"{i}.png") for i in range(count)]


def gallery_for(tabs: list[str]) -> list[str]:
    """`default_gallery()`, or none when the easy-VQA data is not installed and no search tab needs it (the examples
    can do without)."""
    try:
        return default_gallery()
    except ImportError as err:
        if "search" in tabs:
            raise SystemExit(f"The search tab needs gallery images: {err}") from None
        return []


def render_app(model_id: str, tabs: list[str], title: str, revision: str | None = None) -> str:
    """The text of `app.py`: `space_app.py` with its `MODEL_ID`, `REVISION`, `TABS` and `TITLE` filled in."""
    with open(SPACE_APP_PATH, encoding="utf-8") as f:
        text = f.read()
    values = {
        "MODEL_ID: str | None = None": f"MODEL_ID: str | None = {model_id!r}",
        "REVISION: str | None = None": f"REVISION: str | None = {revision!r}",
        "TABS: list[str] = []": f"TABS: list[str] = {list(tabs)!r}",
        'TITLE: str = "MM model"': f"TITLE: str = {title!r}",
    }
    for line, value in values.items():
        if text.count(f"\n{line}\n") != 1:
            raise RuntimeError(f"{SPACE_APP_PATH} lost its `{line}` line, which the Space writer fills in.")
        text = text.replace(f"\n{line}\n", f"\n{value}\n")
    return text


def _space_readme(model_id: str, title: str, tabs: list[str], license: str, hub_id: bool) -> str:
    front = {
        "title": title[:60],
        "emoji": "🔎",
        "colorFrom": "blue",
        "colorTo": "red",
        "sdk": "gradio",
        "sdk_version": GRADIO_VERSION,
        "app_file": "app.py",
        "pinned": False,
        "license": license,
        "short_description": f"Try {title[:40]} in the browser",
    }
    lines = ["---"] + [f"{key}: {json.dumps(value, ensure_ascii=False)}" for key, value in front.items()]
    if hub_id:
        lines += ["models:", f"  - {model_id}"]
    lines += ["---", "", ""]
    shown = "; ".join(TAB_DESCRIPTIONS[tab] for tab in tabs)
    body = f"""# {title}

A demo of [`{model_id}`]({f"https://huggingface.co/{model_id}" if hub_id else model_id}): {shown}. The app loads the
repo with `trust_remote_code=True`; set `MM_SPACE_REVISION` (or `REVISION` in `app.py`) to a commit you have read.

Run it locally:

```bash
pip install gradio=={GRADIO_VERSION} -r requirements.txt
python app.py                       # http://127.0.0.1:7860
MM_SPACE_MODEL=<repo id or folder> python app.py
```

The heatmap is occlusion: each image patch is dropped in turn, and red marks the patches whose removal lowers the
explained score (the VQA answer's probability, or the image's similarity with the text). `gallery/` holds the images
the search tab ranks.
"""
    return "\n".join(lines) + body


def write_space(
    space_dir: str,
    model_id: str,
    tabs: list[str],
    title: str,
    license: str = "apache-2.0",
    revision: str | None = None,
    gallery: list[str] | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Writes the Space folder for a published model.

    Args:
        space_dir (`str`): The folder to write (must be empty or absent unless `overwrite`).
        model_id (`str`): What the app loads: the repo's Hub id, or a local published folder (made absolute).
        tabs (`list[str]`): The app's tabs, from `space_tabs` / `folder_tabs`.
        title (`str`): The page and Space title.
        license (`str`): The Space's license.
        revision (`str`, *optional*): The repo commit the app pins.
        gallery (`list[str]`, *optional*): Images copied to `gallery/` (default: `default_gallery()`).
        overwrite (`bool`): Replace a non-empty `space_dir`.

    Returns:
        The written files, relative to `space_dir`, sorted.
    """
    if not tabs:
        raise SystemExit("This checkpoint serves no task the Space app shows (an early-fusion pretraining checkpoint "
                         "has no unimodal embeddings); publish a VQA, captioning or late/hybrid model.")
    fresh_output_dir(space_dir, overwrite, flag="--space_dir")
    hub_id = not os.path.exists(model_id)
    model_id = model_id if hub_id else os.path.abspath(model_id)
    with open(os.path.join(space_dir, "app.py"), "w", encoding="utf-8") as f:
        f.write(render_app(model_id, tabs, title, revision))
    with open(os.path.join(space_dir, "requirements.txt"), "w", encoding="utf-8") as f:
        f.write(_REQUIREMENTS.format(gradio=GRADIO_VERSION))
    with open(os.path.join(space_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(_space_readme(model_id, title, tabs, license, hub_id))
    images = gallery_for(tabs) if gallery is None else list(gallery)
    if images:
        os.makedirs(os.path.join(space_dir, "gallery"), exist_ok=True)
    for i, path in enumerate(images):
        shutil.copyfile(path, os.path.join(space_dir, "gallery", f"{i:02d}{os.path.splitext(path)[1].lower()}"))
    return sorted(
        os.path.relpath(os.path.join(root, name), space_dir)
        for root, _, names in os.walk(space_dir)
        for name in names
    )
