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
"""Moving-shapes videos: short MP4 clips of easy-VQA shapes whose questions need time to answer.

Each clip tells one story, and its *temporal* question cannot be answered from any single frame, from the frames in
another order, or from their average:

- `direction`: a shape moves in a straight line ("which way does the red circle move?" -> left / right / up / down);
  an optional second shape stands still. Every frame shows the shape somewhere; only the order says where it goes.
- `order`: two shapes are each visible for the same number of frames, one after the other (possibly overlapping):
  "which shape appears first?". Any one frame, or the average, shows both equally often.
- `change`: one shape changes colour part-way: "what color does the rectangle turn?". Frames show both colours;
  only their order says which is the new one.

Each clip also has a `static` control question ("what color is the triangle?", "what shape is in the video?")
that any frame answers. Rows (one per question) carry `video`, `caption`, `question`, `answer`, `question_type`,
`split` and `clip_id`; `ANSWERS` holds the possible answers of each question type, so per-type chance is
`1 / len(ANSWERS[type])`. For the temporal types a model that sees the frames but not their order can still narrow
the answer to two (the axis of motion, the two shapes, the two colours), so its ceiling is 50%.

The manifests (`train.jsonl`, `test.jsonl`, video paths relative to them) load with the package's file loader
(`MMDataArguments(train_file=..., validation_file=...)` and `load_mm_datasets`) and decode through
`MMVideoProcessor` like any user video.

Encoding: H.264 (`libx264`) in `yuv420p` by default, which every player and PyAV decode; 4:2:0 chroma needs even
frame sizes, and a low CRF keeps the palette colours recoverable (shape interiors decode within a few levels of the
easy-VQA RGB values; only edge pixels blend). Encoding is single-threaded so the same seed writes the same bytes.
"""

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw

from .data import _EASY_VQA_PALETTE, EASY_VQA_COLORS, EASY_VQA_SHAPES


__all__ = [
    "ANSWERS",
    "DIRECTIONS",
    "QUESTION_TYPES",
    "TEMPORAL_QUESTION_TYPES",
    "MovingShapesClip",
    "ShapeTrack",
    "generate_moving_shapes",
    "load_moving_shapes",
    "render_clip",
    "sample_clip",
    "write_mp4",
]

DIRECTIONS = ("left", "right", "up", "down")
# Unit steps in image coordinates (x to the right, y downwards).
_DIRECTION_VECTORS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
TEMPORAL_QUESTION_TYPES = ("direction", "order", "change")
QUESTION_TYPES = (*TEMPORAL_QUESTION_TYPES, "static")
# Possible answers per question type: chance is 1 / len(ANSWERS[question_type]).
ANSWERS: dict[str, tuple[str, ...]] = {
    "direction": DIRECTIONS,
    "order": EASY_VQA_SHAPES,
    "change": EASY_VQA_COLORS,
    "static": (*EASY_VQA_SHAPES, *EASY_VQA_COLORS),
}
_KINDS = TEMPORAL_QUESTION_TYPES  # one clip kind per temporal question type, cycled so the splits are balanced


@dataclass
class ShapeTrack:
    """
    One shape over the clip: where it is, what colour, and when it is visible.

    Args:
        shape (`str`): One of `EASY_VQA_SHAPES`.
        color (`str`): Its colour (an `EASY_VQA_COLORS` name) from the first frame.
        half_size (`int`): Half its width in pixels (the circle's radius).
        start (`tuple[float, float]`): Centre `(x, y)` at frame 0.
        end (`tuple[float, float]`): Centre at the last frame; positions in between are linear.
        first_frame (`int`): First frame it is drawn in.
        last_frame (`int`): Frame after the last one it is drawn in.
        new_color (`str`, *optional*): Colour from `change_frame` on.
        change_frame (`int`, *optional*): First frame drawn in `new_color`.
        aspect (`float`): Height / width of a rectangle (1 for the other shapes).
    """

    shape: str
    color: str
    half_size: int
    start: tuple[float, float]
    end: tuple[float, float]
    first_frame: int
    last_frame: int
    new_color: str | None = None
    change_frame: int | None = None
    aspect: float = 1.0

    def center(self, t: int, num_frames: int) -> tuple[float, float]:
        a = t / max(num_frames - 1, 1)
        return (self.start[0] + a * (self.end[0] - self.start[0]), self.start[1] + a * (self.end[1] - self.start[1]))

    def color_at(self, t: int) -> str:
        return self.new_color if self.change_frame is not None and t >= self.change_frame else self.color

    def visible(self, t: int) -> bool:
        return self.first_frame <= t < self.last_frame


@dataclass
class MovingShapesClip:
    """
    A clip's content and its texts: `tracks` (drawn in order, later ones on top), the background colour, a caption
    and its questions as `(question, answer, question_type)` triples (the temporal question first).
    """

    kind: str
    tracks: list[ShapeTrack]
    background: tuple[int, int, int]
    caption: str
    questions: list[tuple[str, str, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------- sampling


def _box(x: float, y: float, half: float) -> tuple[float, float, float, float]:
    return (x - half, y - half, x + half, y + half)


def _overlap(a: tuple[float, ...], b: tuple[float, ...], margin: float = 2) -> bool:
    return not (a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1])


def _path_box(track: ShapeTrack) -> tuple[float, float, float, float]:
    """Bounding box of everywhere the track is drawn."""
    h = track.half_size
    xs, ys = (track.start[0], track.end[0]), (track.start[1], track.end[1])
    return (min(xs) - h, min(ys) - h, max(xs) + h, max(ys) + h)


def _static_position(
    rng: np.random.Generator, half: int, size: int, avoid: list[tuple[float, ...]], tries: int = 50
) -> tuple[float, float] | None:
    """A centre keeping the shape inside the frame and off every box in `avoid` (None when there is no room)."""
    for _ in range(tries):
        x, y = (float(v) for v in rng.integers(half + 1, size - half - 1, size=2))
        if not any(_overlap(_box(x, y, half), box) for box in avoid):
            return x, y
    return None


def sample_clip(rng: np.random.Generator, kind: str, num_frames: int = 16, size: int = 64) -> MovingShapesClip:
    """
    Draws one clip's story of the given kind (`"direction"`, `"order"` or `"change"`) with its caption and questions.

    Args:
        rng (`np.random.Generator`): The only source of randomness (same state, same clip).
        kind (`str`): One of `TEMPORAL_QUESTION_TYPES`.
        num_frames (`int`, *optional*, defaults to 16): Frames in the clip.
        size (`int`, *optional*, defaults to 64): Frame side in pixels.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")
    background = tuple(int(v) for v in rng.integers(230, 256, size=3))  # near-white, as easy-VQA
    # Shapes cover ~10-20% of the side: small enough to move far, large enough that interiors survive 4:2:0 chroma.
    low, high = max(4, size // 10), max(5, size // 6)
    shapes = [str(s) for s in rng.permutation(EASY_VQA_SHAPES)]
    colors = [str(c) for c in rng.permutation(EASY_VQA_COLORS)]  # distinct colours within a clip

    def make_track(shape: str, color: str, **kwargs: Any) -> ShapeTrack:
        half = int(rng.integers(low, high + 1))
        aspect = float(rng.uniform(0.6, 1.0)) if shape == "rectangle" else 1.0
        return ShapeTrack(shape=shape, color=color, half_size=half, aspect=aspect, **kwargs)

    if kind == "direction":
        direction = str(rng.choice(DIRECTIONS))
        mover = make_track(shapes[0], colors[0], start=(0, 0), end=(0, 0), first_frame=0, last_frame=num_frames)
        h = mover.half_size
        # Travel 40-60% of the free range, so the displacement is many pixels between any two sampled frames.
        free = size - 2 * h - 2
        distance = float(rng.uniform(0.4, 0.6) * free)
        dx, dy = _DIRECTION_VECTORS[direction]
        along_start = float(rng.uniform(h + 1, h + 1 + free - distance))  # coordinate along the motion at frame 0
        across = float(rng.integers(h + 1, size - h - 1))
        if dx:
            begin = along_start if dx > 0 else size - along_start
            mover.start, mover.end = (begin, across), (begin + dx * distance, across)
        else:
            begin = along_start if dy > 0 else size - along_start
            mover.start, mover.end = (across, begin), (across, begin + dy * distance)
        tracks = [mover]
        caption = f"a {mover.color} {mover.shape} moves {'to the ' if dx else ''}{direction}"
        if rng.random() < 0.5:  # a still distractor, off the mover's path
            still = make_track(shapes[1], colors[1], start=(0, 0), end=(0, 0), first_frame=0, last_frame=num_frames)
            position = _static_position(rng, still.half_size, size, [_path_box(mover)])
            if position is not None:
                still.start = still.end = position
                tracks.insert(0, still)
                caption += f" while a {still.color} {still.shape} stays still"
        temporal = (f"which way does the {mover.color} {mover.shape} move?", direction, "direction")
        static_track = tracks[int(rng.integers(len(tracks)))]
    elif kind == "order":
        # Equal visible durations, so neither the average frame nor frame counts tell which came first.
        duration = int(rng.integers(num_frames // 2, (2 * num_frames) // 3 + 1))
        # One shape per half of the frame (left/right or top/bottom, either way round), so they never overlap.
        axis, sides = int(rng.integers(2)), rng.permutation(2)
        tracks = []
        for i, (first, last) in enumerate(((0, duration), (num_frames - duration, num_frames))):
            track = make_track(shapes[i], colors[i], start=(0, 0), end=(0, 0), first_frame=first, last_frame=last)
            h, half_frame = track.half_size, size // 2
            low_along = h + 1 + sides[i] * half_frame
            along = float(rng.integers(low_along, max(low_along + 1, low_along + half_frame - 2 * h - 2)))
            across = float(rng.integers(h + 1, size - h - 1))
            track.start = track.end = (along, across) if axis == 0 else (across, along)
            tracks.append(track)
        first, second = tracks
        caption = f"a {first.color} {first.shape} appears, then a {second.color} {second.shape}"
        temporal = ("which shape appears first?", first.shape, "order")
        static_track = tracks[int(rng.integers(2))]
    else:
        track = make_track(shapes[0], colors[0], start=(0, 0), end=(0, 0), first_frame=0, last_frame=num_frames)
        track.start = track.end = _static_position(rng, track.half_size, size, [])
        # The switch falls in the middle third: both colours are on screen for a comparable share of frames.
        track.new_color = colors[1]
        track.change_frame = int(rng.integers(num_frames // 3, num_frames - num_frames // 3 + 1))
        tracks = [track]
        caption = f"a {track.color} {track.shape} turns {track.new_color}"
        temporal = (f"what color does the {track.shape} turn?", track.new_color, "change")
        static_track = None
    if static_track is None:
        static = ("what shape is in the video?", tracks[0].shape, "static")
    else:
        static = (f"what color is the {static_track.shape}?", static_track.color, "static")
    return MovingShapesClip(kind=kind, tracks=tracks, background=background, caption=caption, questions=[temporal, static])


# ---------------------------------------------------------------------------------------------------- rendering


def _draw(draw: PIL.ImageDraw.ImageDraw, track: ShapeTrack, center: tuple[float, float], color: str) -> None:
    x, y = center
    h = track.half_size
    rgb = _EASY_VQA_PALETTE[color]
    if track.shape == "circle":
        draw.ellipse((x - h, y - h, x + h, y + h), fill=rgb)
    elif track.shape == "rectangle":
        v = h * track.aspect
        draw.rectangle((x - h, y - v, x + h, y + v), fill=rgb)
    else:  # an upright triangle in the same box
        draw.polygon([(x, y - h), (x - h, y + h), (x + h, y + h)], fill=rgb)


def render_clip(clip: MovingShapesClip, num_frames: int = 16, size: int = 64) -> np.ndarray:
    """The clip's frames as a uint8 `(T, H, W, 3)` array. Shapes are drawn without anti-aliasing, so interiors are the
    exact easy-VQA RGB values before encoding."""
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        image = PIL.Image.new("RGB", (size, size), clip.background)
        draw = PIL.ImageDraw.Draw(image)
        for track in clip.tracks:
            if track.visible(t):
                _draw(draw, track, track.center(t, num_frames), track.color_at(t))
        frames[t] = np.asarray(image)
    return frames


def write_mp4(
    frames: np.ndarray,
    path: str,
    fps: int = 8,
    codec: str = "libx264",
    crf: int = 10,
    pix_fmt: str = "yuv420p",
) -> None:
    """
    Encodes `(T, H, W, 3)` uint8 RGB frames to an MP4 file with PyAV.

    Args:
        frames (`np.ndarray`): The frames; 4:2:0 formats (`yuv420p`) need even `H` and `W`.
        path (`str`): Output file.
        fps (`int`, *optional*, defaults to 8): Frame rate written in the container.
        codec (`str`, *optional*, defaults to `"libx264"`): PyAV encoder name (`"mpeg4"` also works).
        crf (`int`, *optional*, defaults to 10): x264 constant rate factor (0 = lossless luma; lower = closer
            colours); for other encoders it is used as the quantiser scale `qscale` (1..31).
        pix_fmt (`str`, *optional*, defaults to `"yuv420p"`): Stored pixel format.
    """
    import av  # lazy: only writing needs PyAV

    num_frames, height, width, _ = frames.shape
    if pix_fmt.endswith("420p") and (height % 2 or width % 2):
        raise ValueError(f"pix_fmt {pix_fmt} needs even frame sizes, got {width}x{height}.")
    # Single-threaded with a fixed GOP: the same frames always give the same bytes.
    if codec.startswith("libx264"):
        options = {"crf": str(crf), "preset": "medium", "threads": "1"}
    else:
        options = {"qscale": str(max(1, min(crf, 31))), "threads": "1"}
    with av.open(path, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ---------------------------------------------------------------------------------------------------- datasets


def generate_moving_shapes(
    output_dir: str,
    num_train: int = 3000,
    num_test: int = 600,
    num_frames: int = 16,
    size: int = 64,
    fps: int = 8,
    seed: int = 0,
    codec: str = "libx264",
    crf: int = 10,
    pix_fmt: str = "yuv420p",
) -> dict[str, Any]:
    """
    Writes `num_train` + `num_test` clips under `output_dir/videos/<split>/`, the manifests `train.jsonl` and
    `test.jsonl` (one row per question) and `question_types.json` (the possible answers of each question type).

    Clip `i` of a split is drawn from its own generator seeded with `(seed, split, i)`, so a clip does not depend on
    how many others are written, and the same arguments write the same files.

    Args:
        output_dir (`str`): Destination folder (created).
        num_train (`int`, *optional*, defaults to 3000), num_test (`int`, *optional*, defaults to 600): Clips per split.
        num_frames (`int`, *optional*, defaults to 16): Frames per clip (at least 6).
        size (`int`, *optional*, defaults to 64): Frame side in pixels (even for 4:2:0).
        fps (`int`, *optional*, defaults to 8): Frame rate.
        seed (`int`, *optional*, defaults to 0): Seed.
        codec, crf, pix_fmt: Encoding, see [`write_mp4`].

    Returns:
        A summary: rows and clips per split, bytes written, seconds taken and the arguments.
    """
    if num_frames < 6:
        raise ValueError(f"num_frames must be >= 6 (order and change clips need room), got {num_frames}.")
    if size < 32:
        raise ValueError(f"size must be >= 32 (two shapes side by side), got {size}.")
    if num_train < 0 or num_test < 0:
        raise ValueError(f"num_train and num_test must be >= 0, got {num_train} and {num_test}.")
    started = time.perf_counter()
    os.makedirs(output_dir, exist_ok=True)
    summary: dict[str, Any] = {"rows": {}, "clips": {}, "bytes": 0}
    for split_index, (split, count) in enumerate((("train", num_train), ("test", num_test))):
        os.makedirs(os.path.join(output_dir, "videos", split), exist_ok=True)
        rows = []
        for i in range(count):
            rng = np.random.default_rng([seed, split_index, i])
            clip = sample_clip(rng, _KINDS[i % len(_KINDS)], num_frames, size)
            relative = f"videos/{split}/{i:06d}.mp4"
            path = os.path.join(output_dir, relative)
            write_mp4(render_clip(clip, num_frames, size), path, fps=fps, codec=codec, crf=crf, pix_fmt=pix_fmt)
            summary["bytes"] += os.path.getsize(path)
            clip_id = f"{split}-{i:06d}"
            for question, answer, question_type in clip.questions:
                rows.append(
                    {
                        "video": relative,
                        "caption": clip.caption,
                        "question": question,
                        "answer": answer,
                        "question_type": question_type,
                        "split": split,
                        "clip_id": clip_id,
                    }
                )
        with open(os.path.join(output_dir, f"{split}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        summary["rows"][split], summary["clips"][split] = len(rows), count
    with open(os.path.join(output_dir, "question_types.json"), "w", encoding="utf-8") as f:
        json.dump({t: list(ANSWERS[t]) for t in QUESTION_TYPES}, f, indent=1)
    settings = {"num_frames": num_frames, "size": size, "fps": fps, "seed": seed, "codec": codec, "crf": crf}
    summary.update(settings=settings | {"pix_fmt": pix_fmt}, seconds=round(time.perf_counter() - started, 2))
    return summary


def load_moving_shapes(data_dir: str, **data_arguments: Any) -> tuple[Any, Any]:
    """
    The `train` and `test` rows of a generated folder through the package's own file loader
    (`MMDataArguments(train_file=..., validation_file=...)` and `load_mm_datasets`): canonical columns `video`
    (absolute paths, decoded later by `MMVideoProcessor`), `caption`, `question`, `answer`, plus `question_type`,
    `split` and `clip_id`.

    Args:
        data_dir (`str`): A folder written by [`generate_moving_shapes`].
        data_arguments: Other `MMDataArguments` fields (e.g. `max_train_samples`).
    """
    from .sources import MMDataArguments, load_mm_datasets

    train_file, test_file = (os.path.join(data_dir, f"{split}.jsonl") for split in ("train", "test"))
    for path in (train_file, test_file):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found; write the data with `mm make-moving-shapes --output_dir {data_dir}`.")
    args = MMDataArguments(train_file=train_file, validation_file=test_file, **data_arguments)
    return load_mm_datasets(args, required=("video", "question", "answer"))

