"""`mm space`: the Gradio app of a published repo, served locally (what `mm publish --space_dir` writes for a Space).

    mm space --model outputs/hub/mm-vqa                      # http://127.0.0.1:7860
    mm space --model outputs/hub/mm-hybrid --port 7861 --gallery_dir my_images/

The tabs are those the checkpoint serves (`publishing.space.folder_tabs`): a question about the image, zero-shot labels,
a caption, text-to-image search over the gallery, the occlusion heatmap. The app loads the folder with
`trust_remote_code=True`, as a Space loads the Hub repo.
"""

from dataclasses import dataclass, field
import os

from training import parse_args


__all__ = ["SpaceArguments", "main"]


@dataclass
class SpaceArguments:
    model: str = field(
        metadata={"help": "A published folder (`mm publish --output_dir`), or any saved MM model folder."}
    )
    host: str = field(
        default="127.0.0.1", metadata={"help": "Address to serve on (0.0.0.0 exposes it to the network)."}
    )
    port: int = field(default=7860, metadata={"help": "Port to serve on."})
    gallery_dir: str | None = field(
        default=None, metadata={"help": "Images for the search tab and the examples (default: 8 easy-VQA test images)."}
    )
    title: str | None = field(default=None, metadata={"help": "Page title (default: the folder's name)."})

    def __post_init__(self):
        if not os.path.isfile(os.path.join(self.model, "config.json")):
            raise ValueError(f"--model {self.model} is not a model folder (no config.json); pass a published folder.")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {self.port}.")
        if self.gallery_dir is not None and not os.path.isdir(self.gallery_dir):
            raise ValueError(f"--gallery_dir {self.gallery_dir} is not a folder.")


def main(args: list[str] | None = None) -> None:
    """Serves the app until interrupted."""
    (space_args,) = parse_args((SpaceArguments,), args)
    try:
        from publishing import space_app
    except ImportError as err:
        raise SystemExit(f"mm space needs Gradio ({err}): pip install 'mm-pretrain[space]'.") from None
    from publishing.space import gallery_for, folder_tabs

    tabs = folder_tabs(space_args.model)
    if not tabs:
        raise SystemExit(f"{space_args.model} serves no task the app shows (an early-fusion pretraining checkpoint).")
    gallery = space_app.gallery_images(space_args.gallery_dir) if space_args.gallery_dir else gallery_for(tabs)
    title = space_args.title or os.path.basename(os.path.abspath(space_args.model))
    print(f"Serving {space_args.model} ({', '.join(tabs)}) on http://{space_args.host}:{space_args.port}", flush=True)
    space_app.launch(os.path.abspath(space_args.model), tabs, host=space_args.host, port=space_args.port,
                     gallery=gallery, title=title)


if __name__ == "__main__":
    main()
