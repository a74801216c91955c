"""Registers the pytest marks that transformers' common test files use (their own conftest, which the sdist does not
ship, registers them upstream), so that pytest does not warn about unknown marks."""

TRANSFORMERS_MARKS = {
    "accelerate_tests": "transformers: tests that need accelerate and an accelerator",
    "flash_attn_test": "transformers: flash-attention 2 tests (GPU)",
    "flash_attn_3_test": "transformers: flash-attention 3 tests (GPU)",
    "flash_attn_4_test": "transformers: flash-attention 4 tests (GPU)",
    "torch_compile_test": "transformers: torch.compile tests",
}


def pytest_configure(config):
    for name, description in TRANSFORMERS_MARKS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
