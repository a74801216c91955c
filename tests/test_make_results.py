"""`mm make-results` rewrites only the RESULTS.md sections its experiments measured: the benchmarks' sections (real
images, visual entailment, video, ...) and its own sections whose outputs are absent stay as they are."""

import json
import os

from run_scripts.make_results import HEADER, write_results

GROUNDING = "## Grounding: does the heatmap point at the named object?"
VIDEO = "## Video: questions, retrieval and captions that need time (moving-shapes clips)"
EXISTING = f"""# Results

An introduction someone wrote.

## Captioning

A captioning table whose outputs are not on this machine.

{GROUNDING}

An old grounding table.

{VIDEO}

| test accuracy | direction |
|---|---:|
| (a) model | 98.0% |

### captioning

A subsection that belongs to the video section.
"""


def _grounding_outputs() -> None:
    os.makedirs("outputs/pretrain")
    with open("outputs/pretrain/grounding_eval.json", "w") as f:
        json.dump({"num_composites": 200, "num_queries": 400, "half_recognition": 1.0, "default_method": "occlusion",
                   "methods": {"occlusion": {"peak_hit_rate": 0.845, "mass_hit_rate": 0.955}}}, f)


def test_only_the_measured_sections_are_rewritten(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _grounding_outputs()
    (tmp_path / "RESULTS.md").write_text(EXISTING)
    write_results([], "RESULTS.md")
    text = (tmp_path / "RESULTS.md").read_text()
    assert "An old grounding table." not in text
    new_grounding = text[text.index(GROUNDING):text.index(VIDEO)]
    assert "| occlusion | 84.5% | 95.5% |" in new_grounding
    assert "Default method for this hybrid model: `occlusion`." in new_grounding
    # Everything else, verbatim and in its place.
    assert text.startswith("# Results\n\nAn introduction someone wrote.\n\n## Captioning\n\nA captioning table whose")
    assert text.endswith(EXISTING[EXISTING.index(VIDEO):])
    assert text.count("## ") == EXISTING.count("## ")


def test_a_new_file_gets_the_header_and_the_measured_sections(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _grounding_outputs()
    write_results([], "RESULTS.md")
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith(HEADER + "\n" + GROUNDING + "\n")
    assert "| occlusion | 84.5% | 95.5% |" in text and text.count("\n## ") == 1
