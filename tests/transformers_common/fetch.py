"""Gets transformers' common test files from the sdist of the installed transformers version and makes them importable.

transformers ships its common testers (`ModelTesterMixin`, `ConfigTester`, `ImageProcessingTestMixin`,
`ProcessorTesterMixin`) only in its source distribution, not in the wheel. `load_common_tests()`:

1. downloads `transformers==<transformers.__version__>` as an sdist with pip, once, into the cache folder
   (`~/.cache/mm/transformers_tests`, or `$MM_TRANSFORMERS_TESTS_CACHE`), reused when present;
2. checks that the sdist carries the four common files and extracts only those, into
   `<cache>/<version>/transformers_tests/` (a package named so that it cannot clash with our own `tests/` folder);
3. registers the stand-ins of `standins.py` for the modules those files import that the sdist lacks;
4. imports the four files as `transformers_tests.test_*_common` and returns the names the tester modules use;
5. adds the MM classes, which `modeling_mm` registers with the Auto classes at import, to the copies of transformers'
   `MODEL_*_MAPPING_NAMES` tables that the modeling test file reads: the common tests look a class up there to treat
   it as a base model (no training tests), a sequence classifier or an image-text-to-text model (labels), as they
   do for transformers' own models. transformers' tables themselves are left untouched.

If any step fails, the returned names are replacements whose tests fail with the reason: a conformance run that could
not get transformers' tests must not look like a passing one.
"""

from __future__ import annotations

import collections
import fcntl
import functools
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import transformers

from . import standins


__all__ = ["COMMON_FILES", "CommonTestsUnavailable", "PACKAGE", "cache_root", "extract_common_tests", "load_common_tests"]

PACKAGE = "transformers_tests"
COMMON_FILES = (
    "test_modeling_common.py",
    "test_configuration_common.py",
    "test_processing_common.py",
    "test_image_processing_common.py",
)
# Modules the common files import that the sdist does not ship, and the stand-in that replaces each
# (`fetch_hub_objects_for_ci` lives in transformers' top-level `utils/`, which the common files put on sys.path).
STANDIN_MODULES = {
    f"{PACKAGE}.exporters.test_export": ("ExportTesterMixin",),
    f"{PACKAGE}.generation.test_utils": ("GenerationTesterMixin",),
    f"{PACKAGE}.utils.test_configuration_utils": ("config_common_kwargs",),
    "fetch_hub_objects_for_ci": ("url_to_local_path",),
}
PIP_TIMEOUT_S = 600


class CommonTestsUnavailable(RuntimeError):
    """transformers' common test files could not be downloaded, extracted or imported."""


def cache_root() -> Path:
    return Path(os.environ.get("MM_TRANSFORMERS_TESTS_CACHE", Path.home() / ".cache" / "mm" / "transformers_tests"))


def _sdist(version: str, cache: Path) -> Path:
    """The sdist of `transformers==version` in `cache`, downloaded with pip unless it is already there."""
    path = cache / f"transformers-{version}.tar.gz"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".download.lock", "w") as lock:
        # Parallel test workers: one downloads, the others wait for it and then find the file.
        fcntl.flock(lock, fcntl.LOCK_EX)
        return path if path.is_file() else _download(version, cache, path)


def _download(version: str, cache: Path, path: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--disable-pip-version-check",
        f"transformers=={version}", "-d", str(cache),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise CommonTestsUnavailable(f"`{' '.join(command)}` did not run: {err}") from err
    if done.returncode != 0 or not path.is_file():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise CommonTestsUnavailable(
            f"could not download the transformers {version} sdist (`{' '.join(command)}` exited {done.returncode}):\n"
            f"{tail}"
        )
    return path


def extract_common_tests(version: str | None = None, cache: Path | None = None) -> Path:
    """Extracts the common test files of `transformers==version` (default: the installed one) and returns the folder
    to put on `sys.path`, which holds the package `transformers_tests`."""
    version = version or transformers.__version__
    cache = cache or cache_root()
    root = cache / version
    package = root / PACKAGE
    if all((package / name).is_file() for name in (*COMMON_FILES, "__init__.py")):
        return root
    sdist = _sdist(version, cache)
    try:
        with tarfile.open(sdist) as archive:
            # Members are `transformers-<version>/tests/<file>`; only the top-level common files are taken.
            members = {
                Path(member.name).name: member
                for member in archive.getmembers()
                if member.isfile() and Path(member.name).parts[1:] == ("tests", Path(member.name).name)
            }
            missing = [name for name in COMMON_FILES if name not in members]
            if missing:
                raise CommonTestsUnavailable(f"the transformers {version} sdist ({sdist}) lacks tests/{', tests/'.join(missing)}.")
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{PACKAGE}-", dir=root))
            for name in COMMON_FILES:
                with archive.extractfile(members[name]) as source:
                    (staging / name).write_bytes(source.read())
    except (OSError, tarfile.TarError) as err:
        raise CommonTestsUnavailable(f"could not read the transformers {version} sdist {sdist}: {err}") from err
    # An empty `__init__.py` makes the folder a package (the files import each other relatively); ConfigTester's
    # module also executes it through `direct_transformers_import(<its folder>)`.
    (staging / "__init__.py").write_text("")
    try:
        staging.rename(package)  # atomic: a reader sees all files or none
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process extracted first
    return root


def _install_standins() -> None:
    for module_name, names in STANDIN_MODULES.items():
        parts = module_name.split(".")
        for depth in range(2, len(parts)):  # parent packages that the sdist lacks (`transformers_tests.generation`)
            sys.modules.setdefault(".".join(parts[:depth]), types.ModuleType(".".join(parts[:depth])))
        module = types.ModuleType(module_name, f"Stand-in from {standins.__name__} (not shipped in the sdist).")
        for name in names:
            setattr(module, name, getattr(standins, name))
        sys.modules.setdefault(module_name, module)


def _failing_standins(reason: str) -> types.SimpleNamespace:
    """Replacements that make every conformance test class fail with `reason`."""

    message = f"transformers' common tests are unavailable: {reason}"

    class CommonTestsMissing:
        def test_transformers_common_tests_available(self):
            raise AssertionError(message)

    class ConfigTester:
        def __init__(self, *args, **kwargs):
            pass

        def run_common_tests(self, *args, **kwargs):
            raise AssertionError(message)

    class ImageProcessingTester:
        def __init__(self, parent, **kwargs):
            pass

    return types.SimpleNamespace(
        available=False,
        reason=message,
        ModelTesterMixin=CommonTestsMissing,
        ConfigTester=ConfigTester,
        ImageProcessingTestMixin=CommonTestsMissing,
        ImageProcessingTester=ImageProcessingTester,
        ProcessorTesterMixin=CommonTestsMissing,
    )


def _mirror_auto_registrations(module: types.ModuleType) -> None:
    """Gives `module` copies of its `MODEL_*_MAPPING_NAMES` tables with the classes registered at run time added."""
    import modeling_mm  # noqa: F401  (registers the MM classes with the Auto classes)
    from transformers.models.auto import modeling_auto

    for name, names in list(vars(module).items()):
        if not (name.startswith("MODEL_") and name.endswith("_MAPPING_NAMES") and isinstance(names, dict)):
            continue
        registered = getattr(getattr(modeling_auto, name[: -len("_NAMES")], None), "_extra_content", {})
        extra = {config.model_type: model.__name__ for config, model in registered.items()}
        if extra:
            setattr(module, name, collections.OrderedDict({**names, **extra}))


@functools.cache
def load_common_tests() -> types.SimpleNamespace:
    """The names the conformance tests use, from transformers' common test files; failing replacements (and the
    reason, in `.reason`) when those files cannot be had."""
    try:
        root = extract_common_tests()
        _install_standins()
        if str(root) not in sys.path:
            sys.path.append(str(root))
        try:
            modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
            configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
            image_processing = importlib.import_module(f"{PACKAGE}.test_image_processing_common")
            processing = importlib.import_module(f"{PACKAGE}.test_processing_common")
        except ImportError as err:
            raise CommonTestsUnavailable(
                f"transformers' common test files (in {root / PACKAGE}) could not be imported: {type(err).__name__}: "
                f"{err}. They need the `test` extra (pytest, parameterized)."
            ) from err
    except CommonTestsUnavailable as err:
        return _failing_standins(str(err))
    _mirror_auto_registrations(modeling)
    return types.SimpleNamespace(
        available=True,
        reason=None,
        ModelTesterMixin=modeling.ModelTesterMixin,
        ConfigTester=configuration.ConfigTester,
        ImageProcessingTestMixin=image_processing.ImageProcessingTestMixin,
        ImageProcessingTester=image_processing.ImageProcessingTester,
        ProcessorTesterMixin=processing.ProcessorTesterMixin,
    )
