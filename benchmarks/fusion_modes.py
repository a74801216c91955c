"""Parameter count and forward+backward time of MMModel / MMForPreTraining for each fusion mode at a small size.

    python benchmarks/fusion_modes.py [--batch 32] [--iters 5] [--out benchmarks/fusion_modes.md]

Size: hidden 256, 4 layers per tower (4 heads), 64x64 images with 8px patches, 16 text tokens, vocabulary 30522,
2 fusion layers (hybrid, coattention). The step is MMForPreTraining's forward + backward with its default objectives for that
fusion (early: ITM+MLM, late: ITC, hybrid and coattention: ITC+ITM+MLM+LM), median of `--iters` after one warm-up, fp32.
"""

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from modeling_mm import MMConfig, MMForPreTraining  # noqa: E402


def config_for(fusion: str) -> MMConfig:
    tower = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    return MMConfig(
        fusion=fusion,
        vision_config=dict(image_size=64, patch_size=8, **tower),
        text_config=dict(vocab_size=30522, **tower),
        num_fusion_layers=2,
        num_decoder_layers=2,
        projection_dim=256,
    )


def inputs_for(batch: int, length: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(batch, 3, 64, 64, generator=g),
        "mlm_input_ids": ids.clone(),
        "mlm_labels": labels,
        "image_ids": torch.arange(batch),
    }


def measure(fusion: str, batch: int, iters: int) -> dict:
    torch.manual_seed(0)
    model = MMForPreTraining(config_for(fusion)).train()
    inputs = inputs_for(batch)
    times = []
    for i in range(iters + 1):
        start = time.perf_counter()
        model(**inputs).loss.backward()
        model.zero_grad(set_to_none=True)
        if i:  # the first iteration is a warm-up
            times.append(time.perf_counter() - start)
    return {
        "fusion": fusion,
        "objectives": "+".join(model.config.objectives),
        "base_params_m": sum(p.numel() for p in model.mm.parameters()) / 1e6,
        "total_params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "fwd_bwd_s": statistics.median(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = [measure(fusion, args.batch, args.iters) for fusion in ("early", "late", "hybrid", "coattention")]
    lines = [
        f"Command: `python benchmarks/fusion_modes.py --batch {args.batch} --iters {args.iters}` "
        f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__})",
        "",
        "| fusion | objectives | MMModel params (M) | with heads (M) | fwd+bwd (s), batch "
        f"{args.batch} | samples/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['fusion']} | {r['objectives']} | {r['base_params_m']:.1f} | {r['total_params_m']:.1f} | "
            f"{r['fwd_bwd_s']:.2f} | {args.batch / r['fwd_bwd_s']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
