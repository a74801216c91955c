"""Bad input at every entry point: processor, image processor, collators, dataset loaders, model forward, task heads,
configs and the pretraining script's arguments.

Each entry of `BAD_INPUTS` is one bad input at one entry point. It must raise the named error type with a message
that names what is wrong (the file, the batch index / row, the field or argument): never a deep torch crash, never a
silently wrong result. Entries marked `SKIP_AND_COUNT` are the documented alternative for corrupt samples
(`skip_bad_samples=True`): the sample is dropped, logged and counted, and the count's report names it.

`ACCEPTED_EDGE_INPUTS` are odd but valid inputs that must produce a correct result. The fuzz tests at the end throw
random PIL images, arrays and strings at the processor: every call returns correctly shaped finite tensors or raises
`ValueError`, nothing else.

    grep -c "^    Case(" tests/test_bad_inputs.py   # hand-written bad inputs (model cases are also generated per fusion)
"""

import functools
import io
import json
import os
import re
import struct
import zlib
from collections import namedtuple

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from mm_tester import FUSIONS, MMModelTester

from modeling_mm import (
    FUSION_OBJECTIVES,
    MMConfig,
    MMForConditionalGeneration,
    MMForImageTextRetrieval,
    MMForPreTraining,
    MMForVisualQuestionAnswering,
    MMModel,
    MMTextConfig,
    MMVisionConfig,
)
from processing import MMImageError, MMImageProcessor, MMProcessor, MMVideoProcessor
from processing.collators import (
    BadSampleCounter,
    DataCollatorForImageTextClassification,
    DataCollatorForMMPretraining,
    DataCollatorForRetrieval,
    DataCollatorForVQA,
)

# An entry point, a bad input, what must be raised (or SKIP_AND_COUNT) and a regex the message must match.
Case = namedtuple("Case", "entry name call error match")
SKIP_AND_COUNT = "skip-and-count"

IMAGE_SIZE, MAX_LENGTH = 16, 8
tester = MMModelTester(num_layers=1, image_size=8, patch_size=2)


# ----------------------------------------------------------------------------------------------------------------------
# Shared resources: files on disk, a processor, tiny models
# ----------------------------------------------------------------------------------------------------------------------


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width x height` pixels but holds no pixel data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


class Env:
    """Files and objects the cases use; built once per module."""

    def __init__(self, root):
        self.root = root
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        files = {
            "good.png": _png_bytes(noise[:10, :12]),
            "corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
            "truncated.png": _png_bytes(noise)[: len(_png_bytes(noise)) // 2],
            "empty.png": b"",
            "notes.jpg": b"these are meeting notes, not a JPEG\n",
            "huge.png": _png_header_only(100_000, 100_000),
            "corrupt.mp4": bytes(range(256)) * 8,
        }
        for name, data in files.items():
            (root / name).write_bytes(data)
        (root / "a_folder").mkdir()
        self.path = {name: str(root / name) for name in [*files, "a_folder"]}
        self.path["missing.png"] = str(root / "missing.png")
        self.path["missing.mp4"] = str(root / "missing.mp4")
        from processing.data import build_default_processor

        self.processor = build_default_processor(image_size=IMAGE_SIZE, max_length=MAX_LENGTH)
        self.image_processor = self.processor.image_processor
        self._tower = None

    @property
    def tower(self) -> str:
        if self._tower is None:
            from pretrain_tester import save_tiny_text_tower

            self._tower = save_tiny_text_tower(str(self.root / "tower"))
        return self._tower

    def folder(self, name: str, metadata: str | None, images: dict[str, bytes] | None = None,
               metadata_name: str = "metadata.jsonl") -> str:
        """An image folder with the given metadata text and image files."""
        folder = self.root / "folders" / name
        folder.mkdir(parents=True)
        for file_name, data in (images or {}).items():
            (folder / file_name).write_bytes(data)
        if metadata is not None:
            (folder / metadata_name).write_text(metadata, encoding="utf-8")
        return str(folder)

    def pretrain(self, name: str, **overrides) -> dict:
        from pretrain_tester import tiny_pretrain_args

        from run_scripts import pretrain

        return pretrain.main(tiny_pretrain_args(self.tower, str(self.root / "runs" / name), **overrides))


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    return Env(tmp_path_factory.mktemp("bad_inputs"))


def _rgb(h: int = 5, w: int = 6) -> np.ndarray:
    return np.random.default_rng(h * 100 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _rows(count: int = 3, **columns) -> list[dict]:
    rows = []
    for i in range(count):
        row = {"image": _rgb(5 + i, 6), "image_id": i, "caption": f"a red circle number {i}"}
        row.update({k: (v[i] if isinstance(v, list) else v) for k, v in columns.items()})
        rows.append(row)
    return rows


@functools.cache
def _model(cls: type, fusion: str, **kwargs):
    torch.manual_seed(0)
    if cls is MMForPreTraining:
        kwargs.setdefault("objectives", tuple(FUSION_OBJECTIVES[fusion]))
        kwargs["objectives"] = list(kwargs["objectives"])
    return cls(tester.get_config(fusion, **kwargs)).eval()


def _inputs(**changes) -> dict:
    inputs = tester.get_inputs()
    inputs.update(changes)
    return {k: v for k, v in inputs.items() if v is not None}


def _pretraining_inputs(**changes) -> dict:
    inputs = tester.get_pretraining_inputs()
    inputs.update(changes)
    return inputs


def _skip_count(collator_cls, rows, **kwargs) -> BadSampleCounter:
    def run(env):
        counter = BadSampleCounter()
        collator = collator_cls(env.processor, skip_bad_samples=True, bad_samples=counter, **kwargs)
        batch = collator(rows(env))
        assert batch["pixel_values"].shape[0] == len(rows(env)) - counter.count
        return counter

    return run


# ----------------------------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------------------------

P, IP = "processor", "image processor"
VE, IE = ValueError, MMImageError

BAD_INPUTS = [
    # ---- image files (processor) -------------------------------------------------------------------------------------
    Case(P, "corrupt image file", lambda e: e.processor(images=e.path["corrupt.png"]), IE,
         r"Not a recognised image file.*batch index 0.*corrupt\.png"),
    Case(P, "truncated image file", lambda e: e.processor(images=e.path["truncated.png"]), IE,
         r"truncated or corrupt.*truncated\.png"),
    Case(P, "zero-byte image file", lambda e: e.processor(images=e.path["empty.png"]), IE, r"empty, 0 bytes.*empty\.png"),
    Case(P, "missing image file", lambda e: e.processor(images=[e.path["good.png"], e.path["missing.png"]]), IE,
         r"not found.*batch index 1.*missing\.png"),
    Case(P, "directory as image", lambda e: e.processor(images=e.path["a_folder"]), IE, r"directory.*a_folder"),
    Case(P, "text file named .jpg", lambda e: e.processor(images=e.path["notes.jpg"]), IE,
         r"Not a recognised image file.*notes\.jpg"),
    Case(P, "decompression-bomb header (10^10 pixels)", lambda e: e.processor(images=e.path["huge.png"]), IE,
         r"(too large|exceeds max_image_pixels).*huge\.png"),
    Case(P, "image above max_image_pixels", lambda e: MMImageProcessor(max_image_pixels=100)(PIL.Image.new("RGB", (20, 20))),
         IE, r"400 pixels exceeds max_image_pixels=100"),
    Case(P, "zero-size PIL image", lambda e: e.processor(images=PIL.Image.new("RGB", (0, 5))), IE, r"zero-size"),
    Case(P, "undecodable bytes dict", lambda e: e.processor(images={"bytes": b"garbage", "path": None}), IE,
         r"Not a recognised image file.*batch index 0"),
    Case(P, "dict without path or bytes", lambda e: e.processor(images={"path": None, "bytes": None}), IE,
         r"neither 'path' nor 'bytes'"),
    Case(P, "int as image", lambda e: e.processor(images=7), IE, r"Unsupported image type int"),
    Case(P, "None inside an image batch", lambda e: e.processor(images=[_rgb(), None]), IE,
         r"Unsupported image type NoneType \(batch index 1\)"),
    Case(P, "nested list of images with a non-image", lambda e: e.processor(images=[[_rgb()], [7]]), IE,
         r"Unsupported image type int.*batch index 1"),
    Case(P, "empty image batch", lambda e: e.processor(images=[]), IE, r"empty batch of images"),
    Case(P, "raw bytes as image", lambda e: e.processor(images=b"\x89PNG"), IE, r"Unsupported image type bytes"),
    # ---- arrays and tensors (processor) -------------------------------------------------------------------------------
    Case(P, "NaN float array", lambda e: e.processor(images=np.full((5, 6, 3), np.nan, np.float32)), IE,
         r"NaN or Inf \(batch index 0\)"),
    Case(P, "one NaN pixel", lambda e: e.processor(images=[_rgb() / 255.0, np.where(np.eye(5, 6)[..., None] > 0, np.nan, 0.5)
                                                           .repeat(3, -1)]), IE, r"NaN or Inf \(batch index 1\)"),
    Case(P, "Inf float array", lambda e: e.processor(images=np.full((5, 6, 3), -np.inf)), IE, r"NaN or Inf"),
    Case(P, "NaN torch tensor", lambda e: e.processor(images=torch.full((3, 5, 6), float("nan"))), IE, r"NaN or Inf"),
    Case(P, "float array above 1", lambda e: e.processor(images=np.full((5, 6, 3), 2.0)), IE,
         r"must lie in \[0, 1\].*span \[2, 2\]"),
    Case(P, "negative int array", lambda e: e.processor(images=np.full((5, 6, 3), -1, np.int32)), IE,
         r"int32 has values in \[-1, -1\], outside 0\.\.255"),
    Case(P, "int64 array with 300", lambda e: e.processor(images=np.full((5, 6, 3), 300)), IE, r"outside 0\.\.255"),
    Case(P, "uint32 array above 255", lambda e: e.processor(images=np.full((5, 6, 3), 70_000, np.uint32)), VE,
         r"uint32.*outside 0\.\.255"),
    Case(P, "uint64 tensor above 255", lambda e: e.processor(images=torch.full((3, 5, 6), 1000, dtype=torch.uint64)), VE,
         r"uint64.*outside 0\.\.255"),
    Case(P, "complex array", lambda e: e.processor(images=np.zeros((5, 6, 3), np.complex64)), IE, r"Complex image dtype"),
    Case(P, "object array", lambda e: e.processor(images=np.array([[object()] * 6] * 5)), VE,
         r"dtype object.*batch index 0"),
    Case(P, "string array", lambda e: e.processor(images=np.full((5, 6, 3), "x")), VE, r"dtype <U1.*batch index 0"),
    Case(P, "datetime array", lambda e: e.processor(images=np.zeros((5, 6, 3), "datetime64[s]")), VE,
         r"dtype datetime64.*batch index 0"),
    Case(P, "1-D array", lambda e: e.processor(images=np.zeros(5, np.uint8)), IE, r"2 \(HW\) or 3 \(HWC/CHW\) dims"),
    Case(P, "5-D array in a list", lambda e: e.processor(images=[np.zeros((1, 1, 4, 5, 3), np.uint8)]), IE,
         r"got shape \(1, 1, 4, 5, 3\)"),
    Case(P, "zero-size array", lambda e: e.processor(images=np.zeros((0, 4, 3), np.uint8)), IE, r"zero-size"),
    Case(P, "2-channel array", lambda e: e.processor(images=np.zeros((5, 6, 2), np.uint8)), IE,
         r"Cannot find the channel dim of shape \(5, 6, 2\)"),
    Case(P, "ambiguous channel layout", lambda e: e.processor(images=np.zeros((3, 5, 3), np.uint8)), IE,
         r"Ambiguous channel layout.*input_data_format"),
    Case(P, "bad input_data_format", lambda e: e.processor(images=_rgb(), input_data_format="hwc"), VE,
         r"input_data_format.*hwc"),
    Case(P, "grayscale with do_convert_rgb=False",
         lambda e: MMImageProcessor(do_convert_rgb=False)(PIL.Image.new("L", (5, 5))), IE, r"mode L is not RGB"),
    Case(P, "mixed sizes with do_resize=False", lambda e: e.image_processor([_rgb(5, 6), _rgb(7, 6)], do_resize=False), IE,
         r"different sizes.*batch index 1"),
    Case(P, "bad size override", lambda e: e.processor(images=_rgb(), size=-1), VE, r"`size` must be"),
    # ---- text (processor) ---------------------------------------------------------------------------------------------
    Case(P, "empty text", lambda e: e.processor(text=["a red circle", ""]), VE, r"batch index 1 is empty or whitespace"),
    Case(P, "whitespace-only text", lambda e: e.processor(text=" \n\t"), VE, r"batch index 0 is empty or whitespace"),
    Case(P, "zero-width-only text", lambda e: e.processor(text=["a red circle", "\u200b\u200b"]), VE,
         r"batch index 1.*no tokens"),
    Case(P, "control-characters-only text", lambda e: e.processor(text="\x00\x01\x7f"), VE, r"batch index 0.*no tokens"),
    Case(P, "lone surrogate in text", lambda e: e.processor(text=["fine", "bad \ud800 text"]), VE,
         r"batch index 1.*(surrogate|Unicode)"),
    Case(P, "None inside a text batch", lambda e: e.processor(text=["a", None]), VE, r"batch index 1 is a NoneType"),
    Case(P, "int as text", lambda e: e.processor(text=5), VE, r"`text` must be a string or a list of strings, got int"),
    Case(P, "bytes as text", lambda e: e.processor(text=b"abc"), VE, r"got bytes"),
    Case(P, "empty text batch", lambda e: e.processor(text=[]), VE, r"empty batch of texts"),
    Case(P, "max_length 1 at call", lambda e: e.processor(text="a red circle", max_length=1), VE, r"max_length.*1"),
    Case(P, "max_length 0 at call", lambda e: e.processor(text="a red circle", max_length=0), VE, r"max_length.*0"),
    Case(P, "unknown padding strategy", lambda e: e.processor(text="a", padding="bogus"), VE, r"bogus is not a valid"),
    Case(P, "2 images, 3 texts", lambda e: e.processor(images=[_rgb(), _rgb()], text=["a", "b", "c"]), VE,
         r"Got 2 images and 3 texts"),
    Case(P, "images and videos together, 2 videos for 1 text", lambda e: e.processor(
        images=_rgb(), videos=[np.zeros((2, 5, 6, 3), np.uint8)] * 2, text=["a"]), VE, r"Got 2 videos and 1 texts"),
    Case(P, "nothing to process", lambda e: e.processor(), VE, r"at least one of `images`, `text` or `videos`"),
    Case(P, "MMProcessor(max_length=1)", lambda e: MMProcessor(e.image_processor, e.processor.tokenizer, max_length=1), VE,
         r"`max_length` must be an int >= 2, got 1"),
    # ---- video (processor) --------------------------------------------------------------------------------------------
    Case(P, "empty video batch", lambda e: e.processor(videos=[]), IE, r"empty batch of videos"),
    Case(P, "missing video file", lambda e: e.processor(videos=e.path["missing.mp4"]), IE,
         r"Video file not found.*missing\.mp4"),
    Case(P, "corrupt video file", lambda e: e.processor(videos=e.path["corrupt.mp4"]), IE,
         r"(Cannot decode video|no video stream|no decodable frames).*corrupt\.mp4"),
    Case(P, "NaN video frames", lambda e: e.processor(videos=[np.full((2, 5, 6, 3), np.nan, np.float32)]), IE,
         r"NaN or Inf \(batch index 0, frame 0\)"),
    Case(P, "3-D array as video", lambda e: e.processor(videos=np.zeros((5, 6, 3), np.uint8)), IE,
         r"Expected a \(T, H, W, C\) video"),
    Case(P, "video with no frames", lambda e: e.image_processor.load_video([], 0), IE, r"Video has no frames"),
    # ---- image processor settings -------------------------------------------------------------------------------------
    Case(IP, "size -1", lambda e: MMImageProcessor(size=-1), VE, r"`size` must be"),
    Case(IP, "size with unknown key", lambda e: MMImageProcessor(size={"longest_edge": 8}), VE, r"`size` must be"),
    Case(IP, "image_std 0", lambda e: MMImageProcessor(image_std=0.0), VE, r"`image_std` must be positive"),
    Case(IP, "image_mean of 2 values", lambda e: MMImageProcessor(image_mean=[0.5, 0.5]), VE, r"`image_mean` must be"),
    Case(IP, "background_color 300", lambda e: MMImageProcessor(background_color=(300, 0, 0)), VE, r"`background_color`"),
    Case(IP, "resample not a PIL filter", lambda e: MMImageProcessor(resample=42), VE,
         r"`resample` must be a PIL resampling filter, got 42"),
    Case(IP, "max_image_pixels 0", lambda e: MMImageProcessor(max_image_pixels=0), VE, r"`max_image_pixels` must be"),
    Case(IP, "num_frames 0", lambda e: MMVideoProcessor(num_frames=0), VE, r"`num_frames` must be positive"),
    Case(IP, "crop larger than shortest edge", lambda e: MMImageProcessor(size={"shortest_edge": 8}, crop_size=16), VE,
         r"`crop_size`.*shortest_edge=8"),
    # ---- collators ----------------------------------------------------------------------------------------------------
    Case("collator", "missing caption column", lambda e: DataCollatorForMMPretraining(e.processor)(
        [{"image": _rgb(), "text": "x"}]), VE, r"Row 0 of the batch has no 'caption' column.*remove_unused_columns"),
    Case("collator", "image is None", lambda e: DataCollatorForMMPretraining(e.processor)(_rows(2, image=[_rgb(), None])),
         VE, r"Row 1 of the batch has no 'image' column"),
    Case("collator", "corrupt image file in row 2", lambda e: DataCollatorForMMPretraining(e.processor)(
        _rows(3, image=[_rgb(), _rgb(), e.path["corrupt.png"]])), IE,
         r"row 2 of the batch, file '.*corrupt\.png'.*skip_bad_samples=True"),
    Case("collator", "truncated image file, skipped", _skip_count(
        DataCollatorForMMPretraining, lambda e: _rows(3, image=[_rgb(), e.path["truncated.png"], _rgb()])),
         SKIP_AND_COUNT, r"skipped 1 sample.*row 1 of the batch, file '.*truncated\.png'"),
    Case("collator", "missing image file, skipped (VQA)", _skip_count(
        DataCollatorForVQA, lambda e: _rows(2, image=[e.path["missing.png"], _rgb()], question="what?", answer="red"),
        label2id={"red": 0}), SKIP_AND_COUNT, r"skipped 1 sample.*row 0 of the batch, file '.*missing\.png'"),
    Case("collator", "every image bad", lambda e: DataCollatorForRetrieval(e.processor, skip_bad_samples=True)(
        _rows(2, image=e.path["empty.png"])), IE, r"All 2 samples of this batch were bad"),
    Case("collator", "empty batch", lambda e: DataCollatorForRetrieval(e.processor)([]), VE, r"empty batch of rows"),
    Case("collator", "row is a list", lambda e: DataCollatorForRetrieval(e.processor)([["image", "caption"]]), VE,
         r"Row 0 of the batch is a list, expected a dict"),
    Case("collator", "whitespace caption", lambda e: DataCollatorForMMPretraining(e.processor)(
        _rows(2, caption=["a red circle", "   "])), VE, r"Row 1 of the batch has an empty or non-string 'caption'"),
    Case("collator", "int caption", lambda e: DataCollatorForRetrieval(e.processor)(_rows(2, caption=["ok", 3])), VE,
         r"Row 1 .*'caption': 3"),
    Case("collator", "image and video rows mixed", lambda e: DataCollatorForRetrieval(e.processor)(
        [_rows(1)[0], {"video": [_rgb(), _rgb()], "caption": "a clip"}]), VE, r"mixes rows with `image` and rows with `video`"),
    Case("collator", "VQA answer outside label2id", lambda e: DataCollatorForVQA(e.processor, {"red": 0, "blue": 1})(
        _rows(2, question="what color?", answer=["red", "purple"])), VE, r"Row 1 of the batch has answer 'purple'"),
    Case("collator", "VQA label2id not contiguous", lambda e: DataCollatorForVQA(e.processor, {"red": 0, "blue": 2}), VE,
         r"`label2id` ids must be exactly 0\.\.len"),
    Case("collator", "VQA soft scores without answers", lambda e: DataCollatorForVQA(e.processor, {"red": 0}, soft_scores=True)(
        _rows(1, question="what?")), VE, r"Row 0 of the batch has no 'answers' column"),
    Case("collator", "class label id 5 of 2", lambda e: DataCollatorForImageTextClassification(
        e.processor, {"no": 0, "yes": 1})(_rows(2, text="t", label=[1, 5])), VE, r"Row 1 of the batch has label id 5, outside 0\.\.1"),
    Case("collator", "class label -1", lambda e: DataCollatorForImageTextClassification(e.processor)(
        _rows(1, text="t", label=-1)), VE, r"Row 0 .*label id -1"),
    Case("collator", "unknown string label", lambda e: DataCollatorForImageTextClassification(e.processor, {"dog": 0})(
        _rows(1, text="t", label="cat")), VE, r"Row 0 of the batch has label 'cat', which is not in label2id"),
    Case("collator", "float label", lambda e: DataCollatorForImageTextClassification(e.processor)(
        _rows(1, text="t", label=1.5)), VE, r"Row 0 of the batch has label 1\.5; expected an int or a string"),
    Case("collator", "multi-label row not a list", lambda e: DataCollatorForImageTextClassification(
        e.processor, {"a": 0}, multi_label=True)(_rows(1, text="t", label="a")), VE, r"Row 0 .*multi_label expects a list"),
    Case("collator", "multi_label without label2id", lambda e: DataCollatorForImageTextClassification(
        e.processor, multi_label=True), VE, r"`multi_label=True` needs `label2id`"),
    Case("collator", "mlm_probability 1.5", lambda e: DataCollatorForMMPretraining(e.processor, mlm_probability=1.5), VE,
         r"`mlm_probability` must be in \[0, 1\), got 1\.5"),
    Case("collator", "FLIP without num_patches", lambda e: DataCollatorForMMPretraining(e.processor, image_mask_ratio=0.5),
         VE, r"needs `num_patches`"),
    Case("collator", "max_length 1", lambda e: DataCollatorForRetrieval(e.processor, max_length=1), VE,
         r"`max_length` must be >= 2"),
    # ---- dataset loaders ----------------------------------------------------------------------------------------------
    Case("data", "image folder does not exist", lambda e: _load_folder(e.path["missing.png"]), VE,
         r"missing\.png does not exist or is not a directory"),
    Case("data", "no metadata file", lambda e: _load_folder(e.folder("no_metadata", None, {"a.png": _png_bytes(_rgb())})),
         VE, r"No metadata\.jsonl or metadata\.csv found"),
    Case("data", "metadata without file_name", lambda e: _load_folder(e.folder(
        "no_file_name", '{"name": "a.png", "caption": "x"}\n', {"a.png": _png_bytes(_rgb())})), VE,
         r"metadata\.jsonl has no `file_name` column"),
    Case("data", "metadata names a missing file", lambda e: _load_folder(e.folder(
        "ghost", '{"file_name": "a.png", "caption": "x"}\n{"file_name": "ghost.png", "caption": "y"}\n',
        {"a.png": _png_bytes(_rgb())})), VE, r"row 2: referenced file .*ghost\.png does not exist"),
    Case("data", "metadata line is not JSON", lambda e: _load_folder(e.folder(
        "bad_json", '{"file_name": "a.png", "caption": "x"}\n{oops\n', {"a.png": _png_bytes(_rgb())})), VE,
         r"metadata\.jsonl, line 2: not valid JSON"),
    Case("data", "metadata line is a list", lambda e: _load_folder(e.folder(
        "list_line", '["a.png", "x"]\n', {"a.png": _png_bytes(_rgb())})), VE, r"line 1: expected a JSON object, got list"),
    Case("data", "no text or label column", lambda e: _load_folder(e.folder(
        "no_text", '{"file_name": "a.png", "width": 6}\n', {"a.png": _png_bytes(_rgb())})), VE,
         r"no recognised text or label column.*\['file_name', 'width'\]"),
    Case("data", "empty metadata", lambda e: _load_folder(e.folder("empty_meta", "\n", {"a.png": _png_bytes(_rgb())})), VE,
         r"metadata\.jsonl has no rows"),
    Case("data", "empty file_name in csv", lambda e: _load_folder(e.folder(
        "empty_name", "file_name,caption\na.png,x\n,y\n", {"a.png": _png_bytes(_rgb())}, "metadata.csv")), VE,
         r"metadata\.csv, row 2: empty `file_name`"),
    Case("data", "corrupt image in folder", lambda e: _load_folder(e.folder(
        "corrupt_in_folder", '{"file_name": "a.png", "caption": "x"}\n{"file_name": "bad.png", "caption": "y"}\n',
        {"a.png": _png_bytes(_rgb()), "bad.png": b"\x89PNG\r\n\x1a\nnot really"})), IE,
         r"Bad image in sample 1, file '.*bad\.png'.*skip_bad_samples=True"),
    Case("data", "corrupt image in folder, skipped", lambda e: _load_folder_skipping(e.folder(
        "corrupt_skipped", '{"file_name": "a.png", "caption": "x"}\n{"file_name": "bad.png", "caption": "y"}\n',
        {"a.png": _png_bytes(_rgb()), "bad.png": b""})), SKIP_AND_COUNT, r"skipped 1 sample.*sample 1, file '.*bad\.png'"),
    Case("data", "easy-VQA split 'val'", lambda e: _easy_vqa(split="val"), VE, r"splits 'train' and 'test', got 'val'"),
    Case("data", "easy-VQA view 'captions'", lambda e: _easy_vqa(view="captions"), VE,
         r"`view` must be 'questions' or 'images', got 'captions'"),
    Case("data", "check_images on a missing column", lambda e: _check_images_column(), VE,
         r"Dataset has no 'img' column \(columns: \['image', 'caption'\]\)"),
    # ---- model configs ------------------------------------------------------------------------------------------------
    Case("config", "fusion 'sideways'", lambda e: tester.get_config("sideways"), VE, r"MMConfig\.fusion must be one of"),
    Case("config", "projection_dim 0", lambda e: tester.get_config("late", projection_dim=0), VE,
         r"MMConfig\.projection_dim must be a positive integer, got 0"),
    Case("config", "image_mask_ratio 1.0", lambda e: tester.get_config("late", image_mask_ratio=1.0), VE,
         r"MMConfig\.image_mask_ratio must be in \[0, 1\), got 1\.0"),
    Case("config", "ITC with early fusion", lambda e: tester.get_config("early", objectives=["itc"]), VE,
         r"'itc' is not possible with fusion='early'"),
    Case("config", "unknown objective", lambda e: tester.get_config("hybrid", objectives=["itc", "mim"]), VE,
         r"unknown objective 'mim'"),
    Case("config", "hybrid with 0 fusion layers", lambda e: tester.get_config("hybrid", num_fusion_layers=0), VE,
         r"num_fusion_layers must be >= 1 with fusion='hybrid'"),
    Case("config", "negative fusion layers", lambda e: tester.get_config("late", num_fusion_layers=-1), VE,
         r"num_fusion_layers must be a non-negative integer, got -1"),
    Case("config", "negative objective weight", lambda e: tester.get_config("hybrid", itm_weight=-1.0), VE,
         r"MMConfig\.itm_weight must be >= 0"),
    Case("config", "captioning without decoder layers", lambda e: tester.get_config(
        "late", objectives=["lm"], num_decoder_layers=0), VE, r"includes 'lm' but num_decoder_layers is 0"),
    Case("config", "heads do not divide width", lambda e: MMVisionConfig(hidden_size=30, num_attention_heads=4), VE,
         r"hidden_size \(30\) must be divisible by num_attention_heads \(4\)"),
    Case("config", "patch does not divide image", lambda e: MMVisionConfig(image_size=30, patch_size=4), VE,
         r"image_size \(30\) must be divisible by patch_size \(4\)"),
    Case("config", "num_frames 0", lambda e: MMVisionConfig(num_frames=0), VE, r"num_frames must be a positive integer"),
    Case("config", "unknown patch embedding", lambda e: MMVisionConfig(patch_embedding_type="conv"), VE,
         r"patch_embedding_type must be 'patchify' or 'conv_stem', got 'conv'"),
    Case("config", "conv stem with odd patch", lambda e: MMVisionConfig(
        image_size=24, patch_size=6, patch_embedding_type="conv_stem"), VE, r"power-of-two patch_size >= 2, got 6"),
    Case("config", "num_hidden_layers True", lambda e: MMTextConfig(num_hidden_layers=True), VE,
         r"num_hidden_layers must be a positive integer, got True"),
    Case("config", "dropout 1.5", lambda e: MMTextConfig(hidden_dropout_prob=1.5), VE,
         r"hidden_dropout_prob must be in \[0, 1\], got 1\.5"),
    Case("config", "vision_config as a string", lambda e: MMConfig(vision_config="vit"), VE,
         r"MMConfig\.vision_config must be a dict or a PreTrainedConfig, got str"),
    Case("config", "unknown tower model_type", lambda e: MMConfig(text_config={"model_type": "no-such-model"}), VE,
         r"MMConfig\.text_config: unknown model_type 'no-such-model'"),
    Case("config", "early fusion with different widths", lambda e: MMConfig(
        fusion="early", vision_config={"hidden_size": 64, "num_attention_heads": 4},
        text_config={"hidden_size": 32, "num_attention_heads": 4}), VE,
         r"vision_config\.hidden_size == text_config\.hidden_size \(got 64 and 32\)"),
    Case("config", "config.json with a bad value", lambda e: _config_from_disk(e, {"fusion": "sideways"}), VE,
         r"MMConfig\.fusion must be one of"),
    Case("config", "config.json not JSON", lambda e: _config_from_disk(e, None), OSError, r"not a valid JSON file"),
    # ---- task heads ---------------------------------------------------------------------------------------------------
    Case("head", "VQA label 7 of 5", lambda e: _model(MMForVisualQuestionAnswering, "hybrid", num_labels=5)(
        **_inputs(labels=torch.tensor([0, 1, 7]))), VE, r"labels must be class ids in \[0, 5\); got \[0, 1, 7\]"),
    Case("head", "VQA label -1", lambda e: _model(MMForVisualQuestionAnswering, "late", num_labels=5)(
        **_inputs(labels=torch.tensor([0, -1, 1]))), VE, r"labels must be class ids in \[0, 5\)"),
    Case("head", "soft labels of the wrong width", lambda e: _model(MMForVisualQuestionAnswering, "early", num_labels=5)(
        **_inputs(labels=torch.rand(3, 4))), VE, r"must have shape \(3, 5\), got \(3, 4\)"),
    Case("head", "labels for 2 of 3 rows", lambda e: _model(MMForVisualQuestionAnswering, "hybrid", num_labels=5)(
        **_inputs(labels=torch.tensor([0, 1]))), VE, r"batch_size \(3\).*batch_size \(2\)"),
    Case("head", "caption label outside the vocabulary", lambda e: _model(MMForConditionalGeneration, "hybrid")(
        **_inputs(labels=torch.full((3, 7), 1000))), VE, r"labels\[0, 0\] = 1000.*\[0, 99\)"),
    Case("head", "caption labels of the wrong length", lambda e: _model(MMForConditionalGeneration, "late")(
        **_inputs(labels=torch.ones(3, 5, dtype=torch.long))), VE, r"labels.*shape.*(\(3, 5\).*\(3, 7\)|\(3, 7\).*\(3, 5\))"),
    Case("head", "captioning without an image", lambda e: _model(MMForConditionalGeneration, "hybrid")(
        input_ids=tester.get_inputs()["input_ids"]), VE, r"needs pixel_values"),
    Case("head", "captioning without text", lambda e: _model(MMForConditionalGeneration, "late")(
        pixel_values=tester.get_inputs()["pixel_values"]), VE, r"needs input_ids"),
    Case("head", "captioning head on early fusion", lambda e: MMForConditionalGeneration(tester.get_config("early")), VE,
         r"needs a vision tower"),
    Case("head", "pixel_values and pixel_values_videos in one call", lambda e: _model(MMForVisualQuestionAnswering,
         "hybrid", num_labels=3)(**_inputs(pixel_values_videos=torch.randn(3, 2, 3, 30, 30))), VE,
         r"pixel_values or videos as pixel_values_videos, not both"),
    Case("head", "pixel_values_videos without a time axis", lambda e: _model(MMForConditionalGeneration, "late")(
        **_inputs(pixel_values=None, pixel_values_videos=torch.randn(3, 3, 30, 30))), VE,
         r"pixel_values_videos must be a \(B, T, C, H, W\) tensor.*\(3, 3, 30, 30\)"),
    Case("config", "coattention with 0 fusion layers", lambda e: tester.get_config("coattention", num_fusion_layers=0),
         VE, r"num_fusion_layers must be >= 1 with fusion='coattention'"),
    Case("head", "ITM scores on late fusion", lambda e: _model(MMForImageTextRetrieval, "late").itm_scores(
        **_inputs()), VE, r"ITM scores need fusion='hybrid' or 'early'"),
    Case("head", "rank_texts on early fusion", lambda e: _model(MMForImageTextRetrieval, "early").rank_texts(
        tester.get_inputs()["pixel_values"], tester.get_inputs()["input_ids"]), VE, r"rank_texts needs unimodal"),
    Case("head", "retrieval image_ids for 5 rows", lambda e: _model(MMForImageTextRetrieval, "hybrid")(
        **_inputs(image_ids=torch.arange(5)), return_loss=True), VE, r"Batch sizes differ.*'image_ids': 5"),
    # ---- pretraining script arguments ---------------------------------------------------------------------------------
    Case("pretrain.py", "--objectives itc bogus", lambda e: e.pretrain("objectives", objectives=["itc", "bogus"]),
         SystemExit, r"argument --objectives: invalid choice: 'bogus'"),
    Case("pretrain.py", "--objectives itc itc", lambda e: e.pretrain("objectives2", objectives=["itc", "itc"]), VE,
         r"--objectives lists an objective twice"),
    Case("pretrain.py", "--fusion sideways", lambda e: e.pretrain("fusion", fusion="sideways"), SystemExit,
         r"argument --fusion: invalid choice: 'sideways'"),
    Case("pretrain.py", "--objective_weights 1 x", lambda e: e.pretrain("weights1", objective_weights=["1", "x"]),
         SystemExit, r"argument --objective_weights.*invalid float value: 'x'"),
    Case("pretrain.py", "--objective_weights for 2 of 3 objectives", lambda e: e.pretrain(
        "weights2", objective_weights=[1, 1]), VE, r"--objective_weights has 2 values for 3 objectives"),
    Case("pretrain.py", "--remove_unused_columns true", lambda e: e.pretrain(
        "columns", remove_unused_columns="true"), SystemExit, r"--remove_unused_columns true cannot work"),
    Case("pretrain.py", "--label_names labels", lambda e: e.pretrain("labels", label_names="labels"), SystemExit,
         r"--label_names \['labels'\] cannot work here"),
    Case("pretrain.py", "--text_column nope", lambda e: e.pretrain("text_column", text_column="nope"), VE,
         r"--text_column 'nope' is not a column of easy_vqa \[train\] \(columns: \['image'"),
    Case("pretrain.py", "--group_column nope", lambda e: e.pretrain("group_column", group_column="nope"), SystemExit,
         r"--group_column 'nope' is not a column"),
    Case("pretrain.py", "--resume_from_checkpoint to nowhere", lambda e: e.pretrain(
        "resume1", resume_from_checkpoint=e.path["missing.png"]), SystemExit, r"no such folder '.*missing\.png'"),
    Case("pretrain.py", "--resume_from_checkpoint to an incomplete one", lambda e: e.pretrain(
        "resume2", resume_from_checkpoint=e.path["a_folder"]), SystemExit, r"a_folder' has no checkpoint_complete\.json"),
    Case("pretrain.py", "unknown option", lambda e: e.pretrain("unknown", bogus_flag=1), VE,
         r"not used by the HfArgumentParser.*--bogus_flag"),
    Case("pretrain.py", "missing JSON arguments file", lambda e: _pretrain_raw([e.path["missing.png"] + ".json"]),
         SystemExit, r"Argument file not found: .*missing\.png\.json"),
    Case("pretrain.py", "--learning_rate abc", lambda e: e.pretrain("lr", learning_rate="abc"), SystemExit,
         r"--learning[_-]rate: invalid float value: 'abc'"),
    Case("pretrain.py", "--image_size 30 --patch_size 8", lambda e: e.pretrain("patch", image_size=30), VE,
         r"image_size \(30\) must be divisible by patch_size \(8\)"),
    Case("pretrain.py", "--vision_num_heads 5", lambda e: e.pretrain("heads", vision_num_heads=5), VE,
         r"hidden_size \(32\) must be divisible by num_attention_heads \(5\)"),
    Case("pretrain.py", "--mlm_probability 1.5", lambda e: e.pretrain("mlm", mlm_probability=1.5), VE,
         r"`mlm_probability` must be in \[0, 1\), got 1\.5"),
    Case("pretrain.py", "--max_length 1", lambda e: e.pretrain("max_length", max_length=1), VE, r"max_length.*>= 2"),
    Case("pretrain.py", "--image_mask_ratio 1.0", lambda e: e.pretrain("flip", image_mask_ratio=1.0), VE,
         r"image_mask_ratio must be in \[0, 1\)"),
    Case("pretrain.py", "--dataset folder that does not exist", lambda e: e.pretrain("dataset", dataset=e.path["missing.png"]),
         VE, r"missing\.png does not exist"),
]


def _load_folder(path: str):
    from processing.data import load_image_folder

    return load_image_folder(path, cache_dir=os.path.join(os.path.dirname(path), "_cache_" + os.path.basename(path)))


def _load_folder_skipping(path: str) -> BadSampleCounter:
    from processing.data import load_image_folder

    counter = BadSampleCounter()
    dataset = load_image_folder(path, skip_bad_samples=True, bad_samples=counter, cache_dir=path + "_cache")
    assert len(dataset) == 1
    return counter


def _easy_vqa(**kwargs):
    from processing.data import load_easy_vqa

    return load_easy_vqa(**kwargs)


def _check_images_column():
    from datasets import Dataset

    from processing.data import check_images

    return check_images(Dataset.from_dict({"image": [_rgb()], "caption": ["x"]}), image_column="img")


def _config_from_disk(env: Env, change: dict | None):
    folder = env.root / "configs" / ("bad_value" if change else "not_json")
    folder.mkdir(parents=True)
    if change is None:
        (folder / "config.json").write_text('{"model_type": "mm", "fusion": ', encoding="utf-8")
    else:
        config = tester.get_config("late").to_dict()
        config.update(change)
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return MMConfig.from_pretrained(folder)


def _pretrain_raw(args: list[str]):
    from run_scripts import pretrain

    return pretrain.main(args)


def _model_cases() -> list[Case]:
    """Model-forward bad inputs, generated for every fusion style (each is a distinct code path)."""
    cases = []

    def add(fusion, name, call, match, cls=MMModel, error=VE, **kwargs):
        cases.append(Case("model forward", f"{fusion}: {name}", lambda e: call(_model(cls, fusion, **kwargs)), error, match))

    ids = tester.get_inputs()["input_ids"]
    for f in FUSIONS:
        add(f, "id outside the vocabulary", lambda m: m(**_inputs(input_ids=ids.masked_fill(ids == ids[0, 2], 500))),
            r"input_ids\[0, 2\] = 500 is outside the vocabulary \[0, 99\)")
        add(f, "negative id", lambda m: m(**_inputs(input_ids=ids - 100)), r"input_ids\[0, 0\] = -\d+ is outside")
        add(f, "float input_ids", lambda m: m(**_inputs(input_ids=ids.float())), r"input_ids must be an integer tensor")
        add(f, "1-D input_ids", lambda m: m(**_inputs(input_ids=ids[0], attention_mask=None)),
            r"input_ids must be a non-empty \(batch, sequence\) tensor, got shape \(7,\)")
        add(f, "empty batch", lambda m: m(input_ids=ids[:0], pixel_values=tester.get_inputs()["pixel_values"][:0]),
            r"(input_ids|pixel_values).*(empty|shape \(0, )")
        add(f, "empty text", lambda m: m(**_inputs(input_ids=ids[:, :0], attention_mask=None)),
            r"input_ids must be a non-empty \(batch, sequence\) tensor, got shape \(3, 0\)")
        add(f, "attention_mask longer than the text", lambda m: m(**_inputs(attention_mask=torch.ones(3, 9, dtype=torch.long))),
            r"attention_mask has shape \(3, 9\) but input_ids has shape \(3, 7\)")
        add(f, "attention_mask for 2 of 3 rows", lambda m: m(**_inputs(attention_mask=torch.ones(2, 7, dtype=torch.long))),
            r"attention_mask has shape \(2, 7\) but input_ids has shape \(3, 7\)")
        add(f, "token_type_ids 5 of 2", lambda m: m(**_inputs(token_type_ids=torch.full((3, 7), 5))),
            r"token_type_ids must be in \[0, 2\)")
        add(f, "text longer than the position table",
            lambda m: m(**_inputs(input_ids=torch.ones(3, 65, dtype=torch.long), attention_mask=None)),
            r"Text of 65 tokens exceeds max_position_embeddings=64")
        add(f, "pixel_values without batch dim", lambda m: m(**_inputs(pixel_values=torch.rand(3, 8, 8))),
            r"pixel_values must be \(B, C, H, W\) images or \(B, T, C, H, W\) video, got shape \(3, 8, 8\)")
        add(f, "integer pixel_values", lambda m: m(**_inputs(pixel_values=torch.zeros(3, 3, 8, 8, dtype=torch.uint8))),
            r"pixel_values must be a float tensor, got torch\.uint8")
        add(f, "numpy pixel_values", lambda m: m(**_inputs(pixel_values=np.zeros((3, 3, 8, 8), np.float32))),
            r"pixel_values must be a float tensor")
        add(f, "grayscale pixel_values (1 channel)", lambda m: m(**_inputs(pixel_values=torch.rand(3, 1, 8, 8))),
            r"pixel_values has 1 channels.*num_channels is 3")
        add(f, "RGBA pixel_values (4 channels)", lambda m: m(**_inputs(pixel_values=torch.rand(3, 4, 8, 8))),
            r"pixel_values has 4 channels.*num_channels is 3")
        add(f, "image side not a multiple of the patch", lambda m: m(**_inputs(pixel_values=torch.rand(3, 3, 9, 9))),
            r"\(9x9\) must be multiples of patch_size 2")
        add(f, "clip longer than num_frames", lambda m: m(**_inputs(pixel_values=torch.rand(3, 4, 3, 8, 8))),
            r"pixel_values has 4 frames but vision_config\.num_frames is 2")
        if f == "early":  # late and hybrid score unpaired galleries (ITC only); early fusion needs pairs
            add(f, "3 texts, 2 images", lambda m: m(**_inputs(pixel_values=torch.rand(2, 3, 8, 8))),
                r"input_ids has batch 3 but pixel_values has batch 2")
            add(f, "text only on early fusion", lambda m: m(input_ids=ids), r"encodes text and image jointly: pass both")
        else:
            add(f, "neither text nor image", lambda m: m(), r"Pass input_ids, pixel_values, or both")
        # Pretraining head
        pt = {"cls": MMForPreTraining}
        add(f, "pretraining without an image", lambda m: m(input_ids=ids), r"needs both input_ids and pixel_values", **pt)
        add(f, "pretraining image_ids for 2 of 3", lambda m: m(**_pretraining_inputs(image_ids=torch.arange(2))),
            r"Batch sizes differ between inputs.*'image_ids': 2", **pt)
        if "mlm" in FUSION_OBJECTIVES[f]:
            add(f, "MLM without masked inputs", lambda m: m(**_pretraining_inputs(mlm_input_ids=None)),
                r"'mlm' objective needs mlm_input_ids and mlm_labels", **pt)
            add(f, "MLM label outside the vocabulary", lambda m: m(**_pretraining_inputs(mlm_labels=torch.full((3, 7), 1000))),
                r"mlm_labels\[0, 0\] = 1000 is neither -100.*\[0, 99\)", **pt)
            add(f, "MLM labels of the wrong length", lambda m: m(**_pretraining_inputs(mlm_labels=torch.full((3, 5), -100))),
                r"mlm_labels.*shape.*(\(3, 5\).*\(3, 7\)|\(3, 7\).*\(3, 5\))", **pt)
            add(f, "MLM inputs of the wrong length",
                lambda m: m(**_pretraining_inputs(mlm_input_ids=torch.full((3, 5), 3))),
                r"mlm_input_ids must have the shape of input_ids \(3, 7\), got \(3, 5\)", **pt)
        if f != "early":
            cases.append(Case("model forward", f"{f}: FLIP patch index 999 of 16", lambda e, f=f: _flip_out_of_range(f),
                              VE, r"image_keep_indices.*\[0, 16\)"))
    return cases


def _flip_out_of_range(fusion: str):
    model = _model(MMForPreTraining, fusion)
    model.train()
    try:
        return model(**_pretraining_inputs(image_keep_indices=torch.full((3, 4), 999)))
    finally:
        model.eval()


BAD_INPUTS += _model_cases()


def test_the_table_is_large_and_names_are_unique():
    names = [(case.entry, case.name) for case in BAD_INPUTS]
    assert len(names) == len(set(names))
    assert len(BAD_INPUTS) >= 150, len(BAD_INPUTS)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[f"{c.entry}: {c.name}" for c in BAD_INPUTS])
def test_bad_input_is_named_or_skipped_and_counted(case, env, capsys):
    if "video" in case.name and "corrupt" in case.name:
        pytest.importorskip("av", reason="video files need PyAV")
    if case.error == SKIP_AND_COUNT:
        counter = case.call(env)
        assert isinstance(counter, BadSampleCounter) and counter.count == 1
        assert re.search(case.match, counter.report(), re.DOTALL), counter.report()
        return
    with pytest.raises(BaseException) as info:
        case.call(env)
    error = info.value
    text = f"{error}\n{capsys.readouterr().err}"
    # The right type of error: never a deep torch crash (RuntimeError, IndexError, TypeError, ...).
    assert isinstance(error, case.error), f"{type(error).__name__}: {text[:1500]}"
    assert re.search(case.match, text, re.DOTALL), f"message does not name the problem ({case.match!r}):\n{text[:1500]}"


# ----------------------------------------------------------------------------------------------------------------------
# Odd but valid inputs: a correct result, not an error
# ----------------------------------------------------------------------------------------------------------------------

ODD_MODES = ["1", "L", "P", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "F", "LA", "PA", "RGBX", "La",
             "RGBa"]


@pytest.mark.parametrize("mode", ODD_MODES)
def test_every_pil_mode_gives_finite_rgb(mode, env):
    image = PIL.Image.new(mode, (7, 5))
    image.frombytes(np.random.default_rng(0).integers(0, 256, len(image.tobytes()), dtype=np.uint8).tobytes())
    if mode == "F":  # random bytes can spell NaN; keep the floats finite and in PIL's 0..255 range
        image = PIL.Image.fromarray(np.random.default_rng(0).uniform(0, 255, (5, 7)).astype(np.float32), mode="F")
    pixel_values = env.processor(images=image)["pixel_values"]
    assert pixel_values.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE) and pixel_values.dtype == torch.float32
    assert torch.isfinite(pixel_values).all() and pixel_values.abs().max() <= 1.0 + 1e-6


def test_accepted_edge_inputs(env):
    # 16-bit data is scaled, not clipped: full-scale 16-bit white equals 8-bit white.
    white16 = env.processor(images=np.full((5, 6, 3), 65535, np.uint16))["pixel_values"]
    white8 = env.processor(images=np.full((5, 6, 3), 255, np.uint8))["pixel_values"]
    torch.testing.assert_close(white16, white8)
    # Integer dtypes other than uint8 holding 0..255 values are accepted as 8-bit data (uint32/uint64 included).
    for dtype in (np.int64, np.uint32, np.uint64):
        torch.testing.assert_close(env.processor(images=np.full((5, 6, 3), 255, dtype))["pixel_values"], white8)
    # Over-long text is truncated to max_length, ending with [SEP].
    encoding = env.processor(text=["word " * 10_000, "short"])
    assert encoding["input_ids"].shape == (2, MAX_LENGTH)
    assert encoding["input_ids"][0, -1] == env.processor.tokenizer.sep_token_id
    assert encoding["attention_mask"][1].sum() < MAX_LENGTH
    # Emoji, right-to-left marks and accents tokenise (to [UNK] where the vocabulary has nothing).
    ids = env.processor(text="🙂 \u202eabc café")["input_ids"]
    assert ids.shape[1] > 2 and int(ids.max()) < env.processor.tokenizer.vocab_size
    # A huge image within the pixel budget is resized, not refused.
    big = env.processor(images=np.zeros((1500, 2000, 3), np.uint8))["pixel_values"]
    assert big.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)


# ----------------------------------------------------------------------------------------------------------------------
# Fuzzing the processor
# ----------------------------------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FUZZ_MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "F", "LA", "PA", "RGBX"]
FUZZ_DTYPES = [np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32,
               np.float64, np.bool_, np.complex64]


@st.composite
def pil_images(draw):
    image = PIL.Image.new(draw(st.sampled_from(FUZZ_MODES)), (draw(st.integers(1, 40)), draw(st.integers(1, 40))))
    image.frombytes(draw(st.binary(min_size=len(image.tobytes()), max_size=len(image.tobytes()))))
    return image


sides = st.integers(0, 12)
image_shapes = st.one_of(
    st.tuples(sides, sides),  # HW
    st.tuples(sides, sides, st.sampled_from([1, 3, 4])),  # HWC
    st.tuples(st.sampled_from([1, 3, 4]), sides, sides),  # CHW
    hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6),  # anything
)
arrays = hnp.arrays(dtype=st.sampled_from(FUZZ_DTYPES), shape=image_shapes)
tensors = arrays.map(lambda a: torch.from_numpy(np.ascontiguousarray(a)))
texts = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=40),  # any code point, lone surrogates included
    st.sampled_from(["", " ", "\t\n", "\u200b", "\x00", "a red circle", "word " * 100]),
)


def _check_processor_output(env, call, batch: int | None, with_text: bool, with_images: bool) -> None:
    try:
        out = call()
    except ValueError:
        return  # a clear refusal (MMImageError is a ValueError) is always acceptable
    if with_images:
        pixel_values = out["pixel_values"]
        assert pixel_values.dtype == torch.float32
        assert pixel_values.shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE)
        assert batch is None or pixel_values.shape[0] == batch
        assert torch.isfinite(pixel_values).all()
    if with_text:
        ids, mask = out["input_ids"], out["attention_mask"]
        assert ids.dtype == torch.long and ids.shape == mask.shape and ids.shape[1] <= MAX_LENGTH
        assert batch is None or ids.shape[0] == batch
        assert int(ids.min()) >= 0 and int(ids.max()) < len(env.processor.tokenizer)
        if not with_images:  # next to an image, "" is the empty captioning prompt ([CLS] [SEP])
            assert (mask.sum(-1) > 2).all(), "a text with no tokens but [CLS] [SEP] was accepted"


@FUZZ
@given(images=st.lists(pil_images(), min_size=1, max_size=3), text=st.lists(texts, min_size=1, max_size=3))
def test_fuzz_processor_pil_images_and_texts(env, images, text):
    _check_processor_output(env, lambda: env.processor(images=images, text=text), len(images), True, True)


@FUZZ
@given(array=st.one_of(arrays, tensors))
def test_fuzz_processor_arrays(env, array):
    _check_processor_output(env, lambda: env.processor(images=array), None, False, True)


@FUZZ
@given(text=st.one_of(texts, st.lists(texts, min_size=0, max_size=4)))
def test_fuzz_processor_texts(env, text):
    _check_processor_output(env, lambda: env.processor(text=text), None if isinstance(text, str) else len(text), True, False)
