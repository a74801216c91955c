"""Where the files a published repo ships are found."""

import os


__all__ = ["PIPELINES_FILE", "PIPELINES_PATH"]

# The custom pipeline code a published repo ships: it lives with the model code (self-contained, it runs without this
# package) and `import modeling_mm` registers its tasks locally.
PIPELINES_FILE = "pipelines_mm.py"
PIPELINES_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "modeling_mm", PIPELINES_FILE)
