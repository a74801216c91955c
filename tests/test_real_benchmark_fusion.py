"""Tests for the real-image benchmark's `--fusions` rows (hybrid and co-attention trained with ITC + ITM, retrieval from
ITC and with ITM re-ranking), on the tiny generated Fashion-MNIST / OpenClipArt files of `test_real_datasets`: none
of them needs the Debian data packages or downloads anything."""

import json

import numpy as np
import pytest
import torch

from modeling_mm import MMForImageTextRetrieval
from test_real_datasets import _tiny_effnet_dir, _tiny_text_dir, write_fashion_mnist, write_openclipart
from training.real_benchmark import (
    FUSION_RESULTS_SECTION_TITLE,
    RESULTS_SECTION_TITLE,
    build_tower_model,
    encode_text_states,
    itm_match_probability,
    retrieval_with_itm_rerank,
)


CROSS = ["hybrid", "coattention"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny dataset folders, EfficientNet-Lite and text towers, made once for the module."""
    root = tmp_path_factory.mktemp("fusion_bench")
    png_root, svg_root = write_openclipart(str(root / "openclipart"))
    return {
        "fm": write_fashion_mnist(root / "fm", num_train=60, num_test=30),
        "png": png_root,
        "svg": svg_root,
        "effnet": _tiny_effnet_dir(str(root / "effnet")),
        "text": _tiny_text_dir(str(root / "text")),
    }


def test_rerank_reorders_the_itc_top_k_by_itm_only():
    # 3 images x 3 texts, image i and text i of class i. ITC ranks the right text second for images 0 and 1, and the
    # right image second for text 1; the stand-in ITM knows every pair.
    similarity = torch.tensor([
        [0.5, 0.9, 0.1],
        [0.1, 0.5, 0.8],
        [0.05, 0.2, 0.9],
    ])
    labels = torch.arange(3)
    calls = []

    def match(text_rows: torch.Tensor, image_rows: torch.Tensor) -> torch.Tensor:
        calls.append((text_rows.clone(), image_rows.clone()))
        return (text_rows == image_rows).float()

    out = retrieval_with_itm_rerank(similarity, labels, labels, match, top_k=2, ks=(1,))
    assert out["itc"] == {"i2t_recall@1": pytest.approx(1 / 3), "t2i_recall@1": pytest.approx(2 / 3)}
    assert out["itm_reranked"] == {"i2t_recall@1": 1.0, "t2i_recall@1": 1.0}
    assert out["itm_rerank_top1_changed"] == {"i2t": pytest.approx(2 / 3), "t2i": pytest.approx(1 / 3)}
    # Exactly each query's ITC top-k was scored by ITM: 3 images x 2 texts, then 3 texts x 2 images.
    (i2t_texts, i2t_images), (t2i_texts, t2i_images) = calls
    assert set(zip(i2t_images.tolist(), i2t_texts.tolist())) == {
        (i, t) for i in range(3) for t in similarity[i].topk(2).indices.tolist()
    } and len(i2t_texts) == 6
    assert set(zip(t2i_texts.tolist(), t2i_images.tolist())) == {
        (t, i) for t in range(3) for i in similarity[:, t].topk(2).indices.tolist()
    } and len(t2i_texts) == 6
    # An ITM that prefers the wrong candidate makes recall worse: the scores really decide the order.
    worse = retrieval_with_itm_rerank(similarity, labels, labels, lambda t, i: (t != i).float(), top_k=2, ks=(1,))
    assert worse["itm_reranked"] == {"i2t_recall@1": 0.0, "t2i_recall@1": 0.0}
    # Re-ranking only reorders within the top-k: with k = 1 nothing can change.
    same = retrieval_with_itm_rerank(similarity, labels, labels, match, top_k=1, ks=(1,))
    assert same["itm_reranked"] == same["itc"] and same["itm_rerank_top1_changed"] == {"i2t": 0.0, "t2i": 0.0}
    # Late fusion (no ITM): ITC only.
    assert set(retrieval_with_itm_rerank(similarity, labels, labels, None, ks=(1,))) == {"itc"}


@pytest.mark.parametrize("fusion", CROSS)
@pytest.mark.parametrize("tower", ["effnet_lite0_locked", "vit_scratch"])
def test_cached_itm_probability_matches_itm_scores(tiny, fusion, tower):
    """The re-ranking scores from cached tower states are the retrieval head's own `itm_scores` of raw inputs."""
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model = build_tower_model(
        tower, tiny["text"], 32, 16, tiny["effnet"], model_class=MMForImageTextRetrieval, fusion=fusion,
        objectives=["itc", "itm"], num_fusion_layers=2,
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny["text"])
    texts = ["a drawing of a cat.", "food", "a very long title of a drawing of signs and symbols"]
    _, hidden, mask = encode_text_states(model.mm, tokenizer, texts, max_length=16)
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    normalised = pixels.float() / 255 * 2 - 1
    with torch.no_grad():
        tokens = model.mm.encode_image(normalised).last_hidden_state
    text_rows, image_rows = torch.tensor([0, 1, 2, 2, 0]), torch.tensor([3, 0, 1, 3, 3])
    cached = itm_match_probability(model, hidden, mask, tokens, text_rows, image_rows, batch_size=2)
    enc = tokenizer([texts[i] for i in text_rows], padding=True, truncation=True, max_length=16, return_tensors="pt")
    direct = model.itm_scores(enc["input_ids"], normalised[image_rows], enc["attention_mask"])
    torch.testing.assert_close(cached, direct, atol=1e-5, rtol=1e-4)
    assert cached.std() > 0  # a real, pair-dependent score


@pytest.mark.parametrize("fusion", CROSS)
def test_fusion_rows_end_to_end(tiny, tmp_path, fusion):
    from run_scripts.real_benchmark import main

    results_md = tmp_path / "RESULTS.md"
    results_md.write_text(f"# Results\n\n{RESULTS_SECTION_TITLE}\n\nlate rows, kept\n\n## Kept\n\nuntouched\n")
    out = tmp_path / "out"
    results = main([
        "--quick", "--towers", "", "--fusions", f"late,{fusion}", "--rerank_top_k", "4",
        "--fashion_mnist_dir", tiny["fm"], "--openclipart_png_dir", tiny["png"], "--openclipart_svg_dir", tiny["svg"],
        "--openclipart_test_size", "12", "--effnet_dir", tiny["effnet"], "--text_model_name_or_path", tiny["text"],
        "--output_dir", str(out), "--results_file", str(results_md), "--num_threads", "1",
    ])
    saved = json.loads((out / "results.json").read_text())
    recall_keys = {f"{d}_recall@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)}
    for dataset in ("fashion_mnist", "openclipart"):
        assert saved[dataset]["towers"] == {}  # --towers '': no late tower rows
        fusions = saved[dataset]["fusions"]
        assert fusions["tower"] == "effnet_lite0_locked" and set(fusions["rows"]) == {"late", fusion}
        row, late = fusions["rows"][fusion], fusions["rows"]["late"]
        assert set(row["itc"]) == recall_keys and set(row["itm_reranked"]) == recall_keys
        assert all(0.0 <= v <= 1.0 for v in [*row["itc"].values(), *row["itm_reranked"].values()])
        assert set(row["itm_rerank_top1_changed"]) == {"i2t", "t2i"}
        assert np.isfinite(row["final_itc_loss"]) and np.isfinite(row["final_itm_loss"])
        assert row["train_seconds"] >= 0 and row["parameters"] > late["parameters"]
        # The fusion layers and the ITM head learn on top of what the late row trains.
        assert row["trainable_parameters"] > late["trainable_parameters"]
        assert "itm_reranked" not in late and set(late["itc"]) == recall_keys
    text = results_md.read_text()
    assert text.startswith(f"# Results\n\n{RESULTS_SECTION_TITLE}\n\nlate rows, kept\n\n## Kept\n\nuntouched\n")
    assert FUSION_RESULTS_SECTION_TITLE in text and f"| {fusion} |" in text and "ITM re-ranked" in text
    assert "--fusions" in text and FUSION_RESULTS_SECTION_TITLE in results["markdown"]
    # --render_only rewrites only the fusion section, from results.json.
    main(["--render_only", "--output_dir", str(out), "--results_file", str(results_md)])
    assert results_md.read_text() == text


def test_unknown_fusion_is_refused(tiny, tmp_path):
    from run_scripts.real_benchmark import main

    with pytest.raises(ValueError, match="--fusions"):
        main(["--fusions", "early", "--text_model_name_or_path", tiny["text"], "--output_dir", str(tmp_path)])
