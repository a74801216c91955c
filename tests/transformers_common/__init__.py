"""transformers' own common tests (ModelTesterMixin, ConfigTester, ImageProcessingTestMixin, ProcessorTesterMixin), run
against every MM class. The common test files are not copied here: `fetch.py` takes them from the sdist of the installed
transformers version; `standins.py` replaces the few modules they import that the sdist does not ship."""
