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
"""Video processor for the multimodal model.

Self-contained like the image processor: it imports only the image processor, numpy, torch, transformers and (lazily,
for video files) PyAV, so `save_pretrained` can ship it to a Hub repo.

transformers' `BaseVideoProcessor` is built on `TorchvisionBackend` (every resize, crop and normalize is a torchvision
op), which is not usable without torchvision. `MMVideoProcessor` therefore combines the torchvision-free half,
`VideoProcessorMixin` (settings, `from_pretrained` / `save_pretrained` as `video_preprocessor_config.json`,
`AutoVideoProcessor` support), with `PilBackend`, and processes every sampled frame exactly like `MMImageProcessor`
processes an image. Files are decoded by transformers' `load_video(..., backend="pyav")`.
"""

import os
import tempfile
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import Unpack, VideosKwargs

# `validate_typed_dict` as the parent `preprocess` uses it (re-exported there, so the file imports only transformers).
from transformers.video_processing_utils import VideoProcessorMixin, validate_typed_dict
from transformers.video_utils import VideoMetadata, load_video

from .image_processing_mm import (
    DecodeSettings,
    MMImageDecodingMixin,
    MMImageError,
    _is_encoded,
    _is_path,
    _where,
    check_file,
    check_num_pixels,
)


__all__ = ["MMVideoProcessor", "MMVideoProcessorKwargs", "sample_frame_indices"]


class MMVideoProcessorKwargs(VideosKwargs, total=False):
    """
    Settings of `MMVideoProcessor` on top of transformers' `VideosKwargs` (the same two as `MMImageProcessorKwargs`).

    background_color (`tuple[int, int, int]`, *optional*):
        RGB colour that transparent pixels of frames are composited on.
    max_image_pixels (`int`, *optional*):
        Videos whose frames have more pixels are refused from the container header, before decoding.
    """

    background_color: tuple[int, ...] | list[int] | None
    max_image_pixels: int | None


def sample_frame_indices(num_available: int, num_frames: int) -> list[int]:
    """Uniformly spaced frame indices; short clips are padded by repeating their last frame, so every clip has
    `num_frames` frames and a batch stacks."""
    if num_available >= num_frames:
        return np.linspace(0, num_available - 1, num_frames).round().astype(int).tolist()
    return list(range(num_available)) + [num_available - 1] * (num_frames - num_available)


def _all_frames(metadata: VideoMetadata) -> list[int]:
    return list(range(metadata.total_num_frames))


def _is_video(obj: Any) -> bool:
    """A whole video rather than a frame: a file, an encoded dict, a 4D array or a list of frames."""
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.ndim == 4
    return _is_path(obj) or isinstance(obj, (dict, bytes, list, tuple))


def _flatten_videos(videos: Any) -> list[Any]:
    """One video (file, `datasets` dict, list of frames, 4D array) or a batch of them (list of videos, 5D array)."""
    if _is_path(videos) or isinstance(videos, (dict, bytes)):
        return [videos]
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        if videos.ndim not in (4, 5):
            raise MMImageError(
                f"Expected a (T, H, W, C) video or a (B, T, H, W, C) batch, got shape {tuple(videos.shape)}."
            )
        items = list(videos) if videos.ndim == 5 else [videos]
    elif isinstance(videos, (list, tuple)):
        if len(videos) == 0:
            raise MMImageError("Got an empty batch of videos.")
        first = videos[0]
        # A list of frames (PIL images / 2D-3D arrays) is one video; a list of videos (frame lists, 4D arrays, paths,
        # `datasets` {"path", "bytes"} dicts) is a batch.
        is_batch = isinstance(first, (list, tuple, dict, bytes)) or _is_path(first)
        is_batch = is_batch or (isinstance(first, (np.ndarray, torch.Tensor)) and first.ndim == 4)
        items = list(videos) if is_batch else [videos]
        # transformers' nested form, one list of videos per sample (`[[video], [video]]`), is flattened.
        if any(isinstance(item, (list, tuple)) and item and _is_video(item[0]) for item in items):
            items = [video for item in items for video in (item if isinstance(item, (list, tuple)) else [item])]
    else:
        raise MMImageError(f"Unsupported videos type {type(videos).__name__}.")
    if len(items) == 0:
        raise MMImageError("Got an empty batch of videos.")
    return items


class MMVideoProcessor(MMImageDecodingMixin, VideoProcessorMixin, PilBackend):
    r"""
    Constructs a video processor for the multimodal model: samples frames by count (`num_frames`, uniform, short
    clips padded with their last frame) or by rate (`fps`), decodes each frame with the image processor's strict
    decoder and processes it like an image. Returns `pixel_values_videos` of shape `(B, T, 3, H, W)`.

    Accepted videos: a file path or `datasets`' `{"path", "bytes"}` dict (decoded with PyAV through transformers'
    `load_video`), a list of frames (PIL images, arrays, tensors), a `(T, H, W, C)` / `(T, C, H, W)` array; a batch is
    a list of those or a 5D array. Every failure raises `MMImageError` naming the batch index, the file and the frame.

    Settings are those of [`MMImageProcessor`] (same defaults) plus `num_frames` (8), `fps` (sample this many frames
    per second instead; takes precedence over `num_frames` when set; needs the frame rate, known for files or passed
    as `video_metadata`) and `do_sample_frames` (when `False`, every frame is kept).
    """

    valid_kwargs = MMVideoProcessorKwargs
    model_input_names = ["pixel_values_videos"]
    do_sample_frames = True
    num_frames = 8
    fps = None

    def __init__(self, **kwargs: Unpack[MMVideoProcessorKwargs]):
        # Written by `to_dict` (an image processor's, when loading a folder saved before the video processor existed).
        for key in ("video_processor_type", "image_processor_type"):
            kwargs.pop(key, None)
        super().__init__(**kwargs)

    @classmethod
    def from_image_processor(cls, image_processor: Any, **kwargs) -> "MMVideoProcessor":
        """
        A video processor with the image processor's settings (and its `num_frames`, from configs saved when the
        image processor also handled videos), overridden by `kwargs`.
        """
        settings = {k: v for k, v in image_processor.to_dict().items() if k in cls.valid_kwargs.__annotations__}
        return cls(**{**settings, **kwargs})

    def _standardize_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = super()._standardize_kwargs(**kwargs)
        for name in ("num_frames", "fps"):
            if kwargs.get(name) is not None and not kwargs[name] > 0:
                raise ValueError(f"`{name}` must be positive, got {kwargs[name]}.")
        return kwargs

    def sample_frames(
        self, metadata: VideoMetadata, num_frames: int | None = None, fps: float | None = None, **kwargs
    ) -> list[int]:
        """
        Indices of the frames to keep: `fps` per second of video when `fps` is set, else `num_frames` uniformly.

        Args:
            metadata (`VideoMetadata`):
                The clip's `total_num_frames` and, for `fps` sampling, its `fps`.
            num_frames (`int`, *optional*):
                Defaults to `self.num_frames`.
            fps (`int` or `float`, *optional*):
                Defaults to `self.fps`.
        """
        fps = fps if fps is not None else self.fps
        if fps is not None:
            if not metadata.fps:
                raise ValueError(
                    "Sampling by `fps` needs the video's frame rate: pass a file, or `video_metadata` with `fps`."
                )
            # A rate above the video's own keeps every frame once.
            num_frames = min(metadata.total_num_frames, max(1, round(metadata.total_num_frames / metadata.fps * fps)))
        return sample_frame_indices(metadata.total_num_frames, num_frames or self.num_frames)

    def _decode_file(
        self, source: str | bytes, index: int | None, path: str | None, sample: Callable, settings: DecodeSettings
    ) -> tuple[list[torch.Tensor], VideoMetadata]:
        """Decodes the sampled frames of a video file (or its encoded bytes) with PyAV; header checks first."""
        import av  # lazy: only video files need PyAV

        where = _where(index, path)
        check_file(source, index, path, "Video")
        temporary = None
        if isinstance(source, bytes):
            # `load_video` reads files only; encoded bytes from `datasets` go through a temporary one.
            with tempfile.NamedTemporaryFile(suffix=".video", delete=False) as temporary:
                temporary.write(source)
            source = temporary.name
        requested: list[int] = []

        def sample_indices_fn(metadata: VideoMetadata, **kwargs) -> list[int]:
            metadata.total_num_frames = num_available
            requested.extend(sample(metadata))
            # `load_video` keeps each listed frame once; repeats (padding of short clips) are restored below.
            return sorted(set(requested))

        try:
            with av.open(source) as container:
                if not container.streams.video:
                    raise MMImageError(f"File has no video stream ({where}).", index, path)
                stream = container.streams.video[0]
                check_num_pixels(
                    (stream.codec_context.width, stream.codec_context.height),
                    settings.max_image_pixels,
                    where,
                    index,
                    path,
                )
                # Some containers (e.g. Matroska) store no frame count: count the packets, so sampling sees the length.
                num_available = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            if num_available == 0:
                raise MMImageError(f"Video has no decodable frames ({where}).", index, path)
            frames, metadata = load_video(source, backend="pyav", sample_indices_fn=sample_indices_fn)
        except MMImageError:
            raise
        except (av.FFmpegError, OSError, ValueError, TypeError, IndexError, UnicodeDecodeError) as err:
            raise MMImageError(f"Cannot decode video ({where}): {err}", index, path) from err
        finally:
            if temporary is not None:
                os.unlink(temporary.name)
        unique = sorted(set(requested))
        if len(frames) != len(unique):
            raise MMImageError(
                f"Video decoded to {len(frames)} frames, fewer than the {num_available} its container announces "
                f"({where}).",
                index,
                path,
            )
        position = {t: i for i, t in enumerate(unique)}
        metadata.frames_indices = requested
        return [torch.from_numpy(frames[position[t]]).permute(2, 0, 1) for t in requested], metadata  # (3, H, W)

    def _load_clip(
        self,
        video: Any,
        index: int | None,
        input_data_format: Any,
        sample: Callable,
        settings: DecodeSettings,
        metadata: VideoMetadata | None = None,
    ) -> tuple[list[torch.Tensor], VideoMetadata]:
        if _is_encoded(video):
            if video.get("bytes") is None and video.get("path") is None:
                raise MMImageError(f"Video dict has neither 'path' nor 'bytes' ({_where(index)}).", index)
            path = None if video.get("path") is None else os.fspath(video["path"])
            source = video["bytes"] if video.get("bytes") is not None else path
            return self._decode_file(source, index, path, sample, settings)
        if _is_path(video) or isinstance(video, bytes):
            path = None if isinstance(video, bytes) else os.fspath(video)
            return self._decode_file(video if isinstance(video, bytes) else path, index, path, sample, settings)
        if isinstance(video, (np.ndarray, torch.Tensor)):
            if video.ndim != 4:
                raise MMImageError(
                    f"Expected a video array with 4 dims (T, H, W, C) or (T, C, H, W), got shape "
                    f"{tuple(video.shape)} ({_where(index)}).",
                    index,
                )
        elif not isinstance(video, (list, tuple)):
            raise MMImageError(
                f"Unsupported video type {type(video).__name__} ({_where(index)}); expected a file path, a list of "
                "frames or a 4D array.",
                index,
            )
        if len(video) == 0:
            raise MMImageError(f"Video has no frames ({_where(index)}).", index)
        metadata = metadata or VideoMetadata(total_num_frames=len(video))
        metadata.total_num_frames = len(video)
        metadata.frames_indices = sample(metadata)
        frames = [
            self.load_image(video[t], index, input_data_format, settings, frame=t) for t in metadata.frames_indices
        ]
        return frames, metadata

    def load_video(
        self,
        video: Any,
        index: int | None = None,
        input_data_format: Any = None,
        num_frames: int | None = None,
        fps: float | None = None,
    ) -> list[torch.Tensor]:
        """
        Decodes one video strictly and samples its frames; returns them as RGB `(3, H, W)` tensors (uint8, or float32
        in 0..1 for float inputs). Raises `MMImageError` naming `index`, the file and the frame for anything wrong.

        Args:
            video (`str`, `os.PathLike`, `dict`, `list` of frames, `np.ndarray` or `torch.Tensor`):
                See the class docstring.
            index (`int`, *optional*):
                Position in the batch, used in error messages.
            input_data_format (`str`, *optional*):
                Channel layout of array frames when it cannot be inferred.
            num_frames (`int`, *optional*), fps (`float`, *optional*):
                Per-call overrides of the sampling settings.
        """
        sample = partial(self.sample_frames, num_frames=num_frames, fps=fps)
        return self._load_clip(video, index, input_data_format, sample, self._decode_settings())[0]

    def preprocess(self, videos: Any, **kwargs: Unpack[MMVideoProcessorKwargs]) -> BatchFeature:
        """
        Preprocess one video or a batch into `pixel_values_videos`, a float32 `(B, T, 3, H, W)` tensor (`"pt"`, the
        default) or array (`"np"`); with `return_metadata=True` also `video_metadata` (the sampled `frames_indices`).

        The steps of transformers' `VideoProcessorMixin.preprocess` (validate, fill defaults, sample + decode,
        process), except that decoding comes after the settings are resolved: the strict decoder needs
        `do_convert_rgb`, `background_color` and `max_image_pixels` of this call.
        """
        validate_typed_dict(self.valid_kwargs, kwargs)
        for name in self.valid_kwargs.__annotations__:
            kwargs.setdefault(name, getattr(self, name, None))
        kwargs = self._standardize_kwargs(**kwargs)
        self._validate_preprocess_kwargs(**kwargs)

        items = _flatten_videos(videos)
        metadata = kwargs.pop("video_metadata")
        metadata = metadata if isinstance(metadata, (list, tuple)) else [metadata] * len(items)
        if len(metadata) != len(items):
            raise ValueError(f"Got {len(items)} videos but {len(metadata)} `video_metadata` entries.")
        num_frames, fps = kwargs.pop("num_frames"), kwargs.pop("fps")
        if kwargs.pop("do_sample_frames"):
            sample = partial(self.sample_frames, num_frames=num_frames, fps=fps)
        else:
            sample = _all_frames
        settings = self._decode_settings(**kwargs)
        clips, clip_metadata = [], []
        for i, (video, meta) in enumerate(zip(items, metadata)):
            meta = VideoMetadata(**meta) if isinstance(meta, dict) else meta
            frames, meta = self._load_clip(video, i, kwargs["input_data_format"], sample, settings, meta)
            clips.append(frames)
            clip_metadata.append(meta)
        lengths = {len(clip) for clip in clips}
        if len(lengths) > 1:
            raise MMImageError(f"Clips have different numbers of frames {sorted(lengths)}; sample with `num_frames`.")

        frames = [f.numpy() if f.dtype == torch.uint8 else f.numpy() * np.float32(255) for clip in clips for f in clip]
        pixel_values = self._transform(frames, **kwargs)  # (B * T, 3, H, W)
        data = {"pixel_values_videos": pixel_values.reshape(len(clips), -1, *pixel_values.shape[1:])}
        if kwargs.get("return_metadata"):
            data["video_metadata"] = clip_metadata
        return BatchFeature(
            data=data, tensor_type=kwargs.get("return_tensors") or "pt", skip_tensor_conversion=["video_metadata"]
        )

    def __call__(self, videos: Any = None, **kwargs) -> BatchFeature:
        return self.preprocess(videos, **kwargs)
