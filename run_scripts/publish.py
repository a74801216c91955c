"""`mm publish`: an MM checkpoint (or a LoRA adapter) as a Hub-ready folder, then optionally uploaded.

    mm publish --checkpoint outputs/pretrain --output_dir outputs/hub/mm-hybrid \\
        --eval_results outputs/pretrain/eval_zero_shot.json outputs/pretrain/eval_retrieval.json
    mm publish --adapter_path outputs/vqa-lora --merge_adapter --output_dir outputs/hub/mm-vqa
    mm publish --adapter_path outputs/vqa-lora --base_model me/mm-vqa \\
        --output_dir outputs/hub/mm-vqa-lora
    mm publish ... --push --repo_id me/mm-hybrid [--private] [--revision dev]   # upload it

The folder holds everything `pipeline(task, model=<repo>, trust_remote_code=True)` needs in a process without this
package: `config.json` (with an `auto_map` for the config, every head and the processor, and `custom_pipelines`), the
model and processing code, `pipelines_mm.py` (the custom `visual-question-answering` and `image-text-retrieval`
tasks), safetensors weights (sharded above `--max_shard_size`), processor and tokenizer files,
`generation_config.json` when the model has a captioning decoder, and a `README.md` model card whose results come
only from the `--eval_results` files of `mm evaluate`. An adapter repo (`--adapter_path` without
`--merge_adapter`) holds the adapter, the processor and a card naming the base model. No pickle file is ever written.

Without `--push` the run is a dry run: it lists the files and sizes that would be uploaded.
"""

from typing import Any

from publishing.hub import PublishArguments, publish
from training import parse_args, setup_logging


__all__ = ["PublishArguments", "main"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the publication; returns `{"output_dir", "files", "tasks", "commit"}` (`commit` is None in a dry run)."""
    setup_logging()
    (args,) = parse_args((PublishArguments,), argv)
    return publish(args)


if __name__ == "__main__":
    main()
