"""Convert a transformers CLIP / SigLIP checkpoint folder into a late-fusion MM folder, or back.

    python -m run_scripts.convert_clip --input path/to/clip --output_dir outputs/mm-clip --direction to_mm
    python -m run_scripts.convert_clip --input outputs/mm-clip --output_dir outputs/clip --direction from_mm

`to_mm` reads a `CLIPModel` or `SiglipModel` folder (the kind comes from its `config.json`) and writes an `MMModel`
folder that loads with `AutoModel.from_pretrained` after `import modeling_mm`, or with `trust_remote_code=True`
anywhere (the model code is written next to the weights). `from_mm` writes the `CLIPModel` or `SiglipModel` that a
late-fusion MM folder with CLIP or SigLIP towers corresponds to. Either way the tokenizer and processor files are
copied across unchanged: use the source's processor (`AutoProcessor.from_pretrained(<output_dir>)`) with the
converted model. After converting, both models run on random inputs and the largest embedding and logit
differences are printed; the run fails if one is above `--atol`. See `modeling_mm/conversion_clip.py` for how each
part maps.
"""

from dataclasses import dataclass, field
import json
import logging
import os
import shutil
from typing import Any

from modeling_mm import convert_from_mm, convert_to_mm, embedding_differences, load_dual_encoder, load_mm_model
from training import parse_args, setup_logging


logger = logging.getLogger("convert_clip")

__all__ = ["ConvertArguments", "PROCESSOR_FILES", "copy_processor_files", "main"]

# Tokenizer and processor files a CLIP / SigLIP folder may hold (transformers 4.x and 5.x layouts).
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "chat_template.jinja",
)


@dataclass
class ConvertArguments:
    input: str = field(metadata={"help": "Folder of the model to convert (CLIP / SigLIP for to_mm, MM for from_mm)."})
    output_dir: str = field(metadata={"help": "Folder to write the converted model to (must be empty or absent)."})
    direction: str = field(
        default="to_mm",
        metadata={
            "help": "'to_mm' (CLIP / SigLIP -> MM) or 'from_mm' (MM -> CLIP / SigLIP).",
            "choices": ["to_mm", "from_mm"],
        },
    )
    atol: float = field(
        default=1e-4, metadata={"help": "Largest embedding / logit difference accepted in the check after converting."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a non-empty --output_dir."})

    def __post_init__(self):
        if self.direction not in ("to_mm", "from_mm"):
            raise ValueError(f"--direction must be 'to_mm' or 'from_mm', got {self.direction!r}.")
        if not os.path.isfile(os.path.join(self.input, "config.json")):
            raise ValueError(f"--input {self.input} is not a model folder (it has no config.json).")
        if os.path.abspath(self.input) == os.path.abspath(self.output_dir):
            raise ValueError("--output_dir must differ from --input.")


def copy_processor_files(source: str, target: str) -> list[str]:
    """Copies the tokenizer and processor files of `source` (those in `PROCESSOR_FILES`) into `target`; returns
    their names."""
    copied = []
    for name in PROCESSOR_FILES:
        path = os.path.join(source, name)
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(target, name))
            copied.append(name)
    return copied


def _processor_class(folder: str) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f).get("processor_class")
    return None


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Runs the conversion; returns `{"output_dir", "architecture", "processor_files", "differences"}`."""
    setup_logging()
    (config,) = parse_args((ConvertArguments,), args)

    # 1. The output folder must be free (it is written only once the conversion has been checked).
    out = config.output_dir
    if os.path.isdir(out) and os.listdir(out) and not config.overwrite_output_dir:
        raise SystemExit(f"--output_dir {out} is not empty; pass --overwrite_output_dir to replace it.")

    # 2. Load and convert (bad input raises a ValueError naming what is wrong).
    if config.direction == "to_mm":
        dual_model = load_dual_encoder(config.input).eval()
        mm_model = converted = convert_to_mm(dual_model).eval()
    else:
        mm_model = load_mm_model(config.input).eval()
        dual_model = converted = convert_from_mm(mm_model).eval()

    # 3. Check that both sides embed alike.
    differences = embedding_differences(mm_model, dual_model)
    logger.info("Largest differences on random inputs: %s", differences)
    worst = max(differences.values())
    if not worst <= config.atol:
        raise SystemExit(f"The converted model differs from the source by {worst:.3g} (> --atol {config.atol}).")

    # 4. Weights, config (and for MM, the model code) and the processor files.
    if os.path.isdir(out):
        shutil.rmtree(out)  # stale files (old shards) would otherwise stay next to the new ones
    os.makedirs(out)
    converted.save_pretrained(out)
    copied = copy_processor_files(config.input, out)
    processor_class = _processor_class(out)
    if config.direction == "from_mm" and processor_class is not None and processor_class.startswith("MM"):
        logger.warning(
            "%s holds an %s, which needs this package; use the tokenizer and image processor the towers were "
            "trained with.", out, processor_class,
        )
    architecture = type(converted).__name__
    print(f"Wrote {architecture} to {out} (processor files: {', '.join(copied) or 'none'}).")
    return {"output_dir": out, "architecture": architecture, "processor_files": copied, "differences": differences}


if __name__ == "__main__":
    main()
