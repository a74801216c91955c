"""Tiny configs and inputs shared by the model tests (transformers' ModelTester pattern)."""

import torch

from modeling_mm import MMConfig


FUSIONS = ("early", "late", "hybrid")


class MMModelTester:
    """Builds tiny configs (hidden 32, 2 layers, 4 heads, 30px images, 2px patches, vocab 99) and matching inputs."""

    def __init__(
        self,
        batch_size: int = 3,
        seq_length: int = 7,
        image_size: int = 30,
        patch_size: int = 2,
        hidden_size: int = 32,
        num_layers: int = 2,
        num_heads: int = 4,
        vocab_size: int = 99,
        num_frames: int = 2,
    ):
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.vocab_size = vocab_size
        self.num_frames = num_frames

    def get_config(self, fusion: str = "hybrid", **kwargs) -> MMConfig:
        vision = dict(
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=37,
            num_frames=self.num_frames,
        )
        text = dict(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=37,
            max_position_embeddings=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            bos_token_id=1,
            eos_token_id=2,
        )
        kwargs.setdefault("projection_dim", 16)
        kwargs.setdefault("num_fusion_layers", 2)
        kwargs.setdefault("num_decoder_layers", 2)
        return MMConfig(fusion=fusion, vision_config=vision, text_config=text, **kwargs)

    def get_inputs(self, seed: int = 0, video: bool = False, padded: bool = True) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        b, l = self.batch_size, self.seq_length
        input_ids = torch.randint(3, self.vocab_size, (b, l), generator=g)
        input_ids[:, 0] = 1  # [CLS]
        attention_mask = torch.ones(b, l, dtype=torch.long)
        if padded:
            # Row 1 is shorter: the padded tail must not change anything.
            attention_mask[1, l - 3 :] = 0
            input_ids[1, l - 3 :] = 0
        shape = (b, self.num_frames, 3, self.image_size, self.image_size) if video else (b, 3, self.image_size, self.image_size)
        pixel_values = torch.randn(shape, generator=g)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}

    def get_pretraining_inputs(self, seed: int = 0, video: bool = False) -> dict[str, torch.Tensor]:
        inputs = self.get_inputs(seed, video)
        g = torch.Generator().manual_seed(seed + 1)
        masked = inputs["input_ids"].clone()
        labels = torch.full_like(masked, -100)
        choose = (torch.rand(masked.shape, generator=g) < 0.3) & (inputs["attention_mask"] == 1)
        choose[:, 0] = False
        choose[0, 2] = True  # at least one masked token
        labels[choose] = masked[choose]
        masked[choose] = 3  # [MASK]
        inputs.update(
            mlm_input_ids=masked,
            mlm_labels=labels,
            image_ids=torch.arange(self.batch_size),
        )
        return inputs
