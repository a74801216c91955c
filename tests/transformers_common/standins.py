"""Stand-ins for the modules that transformers' common test files import but its sdist does not ship.

`fetch.py` registers each name here under the module path the common files import it from:

| imported as                                           | upstream                                   | stand-in                        |
|-------------------------------------------------------|--------------------------------------------|---------------------------------|
| `tests.exporters.test_export.ExportTesterMixin`       | torch.export / dynamo tests                | empty base: no export tests run |
| `tests.generation.test_utils.GenerationTesterMixin`   | the `generate()` test suite                | marker class (see below)        |
| `tests.utils.test_configuration_utils.config_common_kwargs` | non-default values of the base config fields | our own dict, below       |
| `utils/fetch_hub_objects_for_ci.url_to_local_path`    | maps fixture URLs to files CI pre-fetched  | identity: tests never download  |

These are written for this project, not copied: they provide only what the common files need to import and run.
"""

from __future__ import annotations


__all__ = ["ExportTesterMixin", "GenerationTesterMixin", "config_common_kwargs", "url_to_local_path"]


class ExportTesterMixin:
    """Stand-in base of `ModelTesterMixin`. The sdist has no export tests, so none run (our models are checked for
    `torch.export` nowhere in this step)."""


class GenerationTesterMixin:
    """Stand-in marker. `ModelTesterMixin.test_generation_tester_mixin_inheritance` checks that a tester of a model
    that can `generate()` inherits it; the `generate()` tests themselves are not in the sdist, so none run from here
    (our own generation tests live in tests/test_heads.py)."""


# A non-default value for every public field of `PreTrainedConfig` in transformers 5.x. `ConfigTester.
# check_config_arguments_init` builds a config from these kwargs and checks that each one was kept (dtype as
# torch.float16). Fields a config class defines itself (vocab sizes, token ids...) are not included.
config_common_kwargs: dict = {
    "output_hidden_states": True,
    "output_attentions": True,
    "return_dict": False,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["MMModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}


def url_to_local_path(url: str, **kwargs) -> str:
    """Upstream maps a fixture URL to the file CI pre-fetched from the Hub; tests here never download, so the URL is
    returned unchanged and the few common tests that would load it are skipped in the tester modules."""
    return url
