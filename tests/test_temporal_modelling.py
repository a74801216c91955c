"""Time in the vision towers: the built-in ViT's divided space-time attention (`MMVisionConfig.video_attention`), and
the temporal encoder over per-frame states of towers that encode clips frame by frame
(`MMConfig.video_temporal_layers`). Each must see frame order (reversed or shuffled frames change the output), start
from what the image / frame-average model computes, and load an image checkpoint."""

import pytest
import torch
from transformers import CLIPVisionConfig

from modeling_mm import MMConfig, MMForPreTraining, MMForVisualQuestionAnswering, MMModel
from modeling_mm.configuration_mm import MMVisionConfig
from modeling_mm.modeling_mm import MMDividedSpaceTimeLayer, MMFrameTemporalEncoder, MMVisionModel
from tests.mm_tester import MMModelTester

FRAMES = 4


def _vision(video_attention: str = "divided", num_frames: int = FRAMES, **kwargs) -> MMVisionModel:
    torch.manual_seed(0)
    config = MMVisionConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, num_frames=num_frames, video_attention=video_attention, **kwargs)
    return MMVisionModel(config).eval()


def _clips(batch: int = 2, frames: int = FRAMES, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _train_temporal_parts(model: torch.nn.Module) -> None:
    """Moves every zero-initialised temporal parameter off zero, as training would."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "temporal" in name or "frame_embedding" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)


# -- divided space-time attention --------------------------------------------------------------------------------------


def test_divided_layers_replace_the_joint_ones_and_keep_the_image_layer_names():
    model = _vision()
    assert all(isinstance(layer, MMDividedSpaceTimeLayer) for layer in model.layers)
    joint = {name for name in _vision("joint").state_dict()}
    divided = set(model.state_dict())
    assert joint <= divided  # an image tower's weights all have a place
    assert {n.split(".", 2)[2] for n in divided - joint} == {
        f"{part}.{p}" for part in ("temporal_attn.q_proj", "temporal_attn.k_proj", "temporal_attn.v_proj",
                                   "temporal_attn.out_proj", "layer_norm_temporal") for p in ("weight", "bias")}
    for layer in model.layers:  # the temporal branch starts at zero
        assert not layer.temporal_attn.out_proj.weight.any() and not layer.temporal_attn.out_proj.bias.any()


def test_an_image_checkpoint_loads_into_the_divided_video_model_and_encodes_images_the_same(tmp_path):
    image_model = _vision("joint", num_frames=1)
    image_model.save_pretrained(tmp_path)
    video_model, info = MMVisionModel.from_pretrained(
        tmp_path, num_frames=FRAMES, video_attention="divided", output_loading_info=True
    )
    assert not info["unexpected_keys"]
    assert all("temporal" in key for key in info["missing_keys"]) and info["missing_keys"]
    images = _clips()[:, 0]
    with torch.no_grad():
        expected = image_model(images).last_hidden_state
        got = video_model.eval()(images).last_hidden_state
        one_frame = video_model(images.unsqueeze(1)).last_hidden_state
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(one_frame, expected)  # a one-frame clip is an image
    # Untrained, each frame's patches after the first layer are the image layer's on that frame alone.
    one_layer = MMVisionModel.from_pretrained(tmp_path, num_frames=FRAMES, video_attention="divided",
                                              num_hidden_layers=1).eval()
    image_one_layer = MMVisionModel.from_pretrained(tmp_path, num_hidden_layers=1).eval()
    clips = _clips()
    with torch.no_grad():
        states = one_layer(clips).last_hidden_state[:, 1:].reshape(2, FRAMES, 16, 32)
        for t in range(FRAMES):
            torch.testing.assert_close(states[:, t], image_one_layer(clips[:, t]).last_hidden_state[:, 1:])


@pytest.mark.parametrize("video_attention", ["divided", "joint"])
def test_frame_order_changes_the_output(video_attention):
    model = _vision(video_attention)
    _train_temporal_parts(model)
    clips = _clips()
    with torch.no_grad():
        pooled = model(clips).pooler_output
        reversed_ = model(clips.flip(1)).pooler_output
        shuffled = model(clips[:, [2, 0, 3, 1]]).pooler_output
    assert (pooled - reversed_).abs().max() > 1e-3 and (pooled - shuffled).abs().max() > 1e-3


def test_divided_attention_sees_order_through_attention_alone():
    """With the temporal embeddings at zero, divided attention is equivariant to a permutation of the frames and
    its frame-averaged [CLS] invariant: the embeddings are what tells it the order (so the test above is not passing
    for some accidental reason)."""
    model = _vision()
    _train_temporal_parts(model)
    with torch.no_grad():
        model.embeddings.temporal_embedding.zero_()
        clips = _clips()
        torch.testing.assert_close(model(clips).pooler_output, model(clips[:, [2, 0, 3, 1]]).pooler_output)


def test_divided_attention_matches_across_kernels_and_checkpointing():
    model = _vision()
    _train_temporal_parts(model)
    clips = _clips()
    with torch.no_grad():
        reference = model(clips).last_hidden_state
        model.set_attn_implementation("eager")
        torch.testing.assert_close(model(clips).last_hidden_state, reference, rtol=1e-5, atol=1e-5)
        out = model(clips, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2 * FRAMES, 4, 17, 17)
    assert len(out.hidden_states) == 3
    model.set_attn_implementation("sdpa")
    model.train()
    clips.requires_grad_(True)
    model(clips).pooler_output.sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(clips).pooler_output.sum().backward()
    for p, expected in zip(model.parameters(), plain):
        torch.testing.assert_close(p.grad, expected)


def test_divided_attention_refuses_flip_masks_on_clips_and_bad_values():
    model = _vision()
    with pytest.raises(ValueError, match="video_attention='divided'"):
        model(_clips(), image_keep_indices=torch.zeros(2, 8, dtype=torch.long))
    # Images keep FLIP: a one-frame input has nothing to pair across frames.
    assert model(_clips()[:, 0], image_keep_indices=torch.arange(8).expand(2, -1)).last_hidden_state.shape == (2, 9, 32)
    with pytest.raises(ValueError, match="video_attention"):
        MMVisionConfig(video_attention="factorised")


def test_a_divided_video_model_trains_and_round_trips(tmp_path):
    tester = MMModelTester(num_frames=FRAMES)
    config = tester.get_config("hybrid", objectives=["itc", "itm"])
    config.vision_config.video_attention = "divided"
    torch.manual_seed(0)
    model = MMForPreTraining(config)
    inputs = tester.get_inputs(video=True)
    out = model(**inputs, image_ids=torch.arange(3))
    out.loss.backward()
    assert model.mm.vision_model.layers[0].temporal_attn.out_proj.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    loaded = MMForPreTraining.from_pretrained(tmp_path).eval()
    assert loaded.config.vision_config.video_attention == "divided"
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).loss, model.eval()(**inputs).loss)


def _order_clips(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips of 4 frames, two red then two blue (label 0) or two blue then two red (label 1), plus noise: every clip
    holds the same frames whatever its label, so only their order tells the answer."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (count,), generator=generator)
    red, blue = torch.zeros(3, 16, 16), torch.zeros(3, 16, 16)
    red[0], blue[2] = 1.0, 1.0
    first = torch.stack([red, red, blue, blue])
    clips = torch.stack([first if label == 0 else first.flip(0) for label in labels])
    return clips + 0.3 * torch.randn(clips.shape, generator=generator), labels


def test_a_trained_video_qa_model_answers_from_frame_order_and_shuffled_frames_change_the_answer():
    """Trained on "which colour comes first?" (until its training batches are all right), the divided-attention
    model's answer follows the frames' order: reversing each held-out clip, or swapping its halves, turns the predicted
    answer over, where a time-blind model could only guess (the frames are the same whatever the answer)."""
    torch.manual_seed(0)
    config = MMModelTester(num_frames=FRAMES, image_size=16, patch_size=4).get_config("late", num_labels=2)
    config.vision_config.video_attention = "divided"
    model = MMForVisualQuestionAnswering(config)
    question = MMModelTester(batch_size=1).get_inputs(padded=False)

    def ask(clips: torch.Tensor, labels: torch.Tensor | None = None):
        """The one question about every clip of the batch."""
        batch = len(clips)
        return model(input_ids=question["input_ids"].expand(batch, -1),
                     attention_mask=question["attention_mask"].expand(batch, -1), pixel_values=clips, labels=labels)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    all_right = 0
    for step in range(300):
        clips, labels = _order_clips(32, seed=step)
        out = ask(clips, labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        all_right = all_right + 1 if bool((out.logits.argmax(-1) == labels).all()) else 0
        if all_right == 5:
            break
    assert all_right == 5, f"order not learned in {step + 1} steps (loss {out.loss.item():.3f})"
    model.eval()
    clips, labels = _order_clips(64, seed=1000)
    with torch.no_grad():
        answer = ask(clips).logits.argmax(-1)
        reversed_ = ask(clips.flip(1)).logits.argmax(-1)
        swapped = ask(clips[:, [2, 3, 0, 1]]).logits.argmax(-1)
    assert (answer == labels).float().mean() >= 0.95
    assert (reversed_ != answer).float().mean() >= 0.95 and (swapped != answer).float().mean() >= 0.95


# -- a temporal encoder for towers that encode clips frame by frame --------------------------------------------------


def _clip_tower_config(fusion: str = "hybrid", layers: int = 1, **kwargs) -> MMConfig:
    tester = MMModelTester()
    text = tester.get_config(fusion).text_config
    vision = CLIPVisionConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=37)
    return MMConfig(fusion=fusion, vision_config=vision, text_config=text, projection_dim=16,
                    video_temporal_layers=layers, video_max_frames=8, **kwargs)


CLIP_TOKENS = 1 + (16 // 4) ** 2  # per frame: [CLS] + a 4x4 patch grid


@pytest.mark.parametrize(
    "tokens, width, motion",
    [(0, None, False), (CLIP_TOKENS, None, False), (0, 16, False), (CLIP_TOKENS, 16, False), (CLIP_TOKENS, 16, True),
     (CLIP_TOKENS, None, True)],
    ids=["pooled-states", "all-tokens", "pooled-states-bottleneck", "all-tokens-bottleneck", "motion-bottleneck",
         "motion"],
)
def test_the_temporal_encoder_starts_as_the_frame_average(tokens, width, motion):
    torch.manual_seed(0)
    averaging = MMModel(_clip_tower_config(layers=0)).eval()
    torch.manual_seed(0)
    temporal = MMModel(
        _clip_tower_config(layers=2, video_temporal_tokens=tokens, video_temporal_hidden_size=width,
                           video_motion_embedding=motion)
    ).eval()
    assert isinstance(temporal.temporal_encoder, MMFrameTemporalEncoder) and averaging.temporal_encoder is None
    temporal.load_state_dict(averaging.state_dict(), strict=False)  # the same tower weights
    clips = _clips()
    with torch.no_grad():
        a, b = averaging.encode_image(clips), temporal.encode_image(clips)
    torch.testing.assert_close(b.pooler_output, a.pooler_output)
    torch.testing.assert_close(b.last_hidden_state, a.last_hidden_state)


def test_the_temporal_encoder_sees_frame_order_where_the_average_cannot():
    torch.manual_seed(0)
    averaging = MMModel(_clip_tower_config(layers=0)).eval()
    torch.manual_seed(0)
    temporal = MMModel(_clip_tower_config(layers=1)).eval()
    _train_temporal_parts(temporal)
    with torch.no_grad():  # the residual branches off zero too
        for layer in temporal.temporal_encoder.layers:
            layer.self_attn.out_proj.weight.normal_(0, 0.2)
            layer.mlp.fc2.weight.normal_(0, 0.2)
    clips, order = _clips(), [2, 0, 3, 1]
    with torch.no_grad():
        torch.testing.assert_close(averaging.encode_image(clips).pooler_output,
                                   averaging.encode_image(clips[:, order]).pooler_output)
        pooled, shuffled = temporal.encode_image(clips), temporal.encode_image(clips[:, order])
    assert (pooled.pooler_output - shuffled.pooler_output).abs().max() > 1e-3
    # The tokens handed to fusion carry the frame embeddings: a shuffled clip's tokens are not a permutation.
    tokens = pooled.last_hidden_state.reshape(2, FRAMES, -1, 32)
    moved = shuffled.last_hidden_state.reshape(2, FRAMES, -1, 32)
    assert (tokens[:, order] - moved).abs().max() > 1e-3


def _moving_feature(reverse: bool, frames: int = 4, width: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states `(1, T, T, D)` of a clip in which one feature vector sits at token t in frame t (or T-1-t), on an
    otherwise constant background, and the frames' pooled states (the token mean, as the CNN tower pools): the two
    directions have the same pooled state in every frame."""
    generator = torch.Generator().manual_seed(3)
    background, feature = torch.randn(width, generator=generator), torch.randn(width, generator=generator)
    tokens = background.expand(1, frames, frames, width).clone()
    for t in range(frames):
        tokens[0, t, frames - 1 - t if reverse else t] = feature
    return tokens.mean(2), tokens


@pytest.mark.parametrize("width", [None, 16], ids=["tower-width", "bottleneck"])
def test_temporal_layers_over_all_tokens_see_the_way_a_feature_moves_which_pooled_frame_states_hide(width):
    encoders = {}
    for tokens in (0, 4):
        torch.manual_seed(0)
        config = _clip_tower_config(layers=1, video_temporal_tokens=tokens, video_temporal_hidden_size=width)
        encoder = MMFrameTemporalEncoder(config)
        _train_temporal_parts(encoder)
        with torch.no_grad():
            if encoder.spatial_embedding is not None:
                encoder.spatial_embedding.normal_(0, 0.2)
            if encoder.up is not None:
                encoder.up.weight.normal_(0, 0.2)
            for layer in encoder.layers:
                layer.self_attn.out_proj.weight.normal_(0, 0.2)
                layer.mlp.fc2.weight.normal_(0, 0.2)
        encoders[tokens] = encoder.eval()
    (states, rightwards), (same_states, leftwards) = _moving_feature(False), _moving_feature(True)
    torch.testing.assert_close(states, same_states)
    with torch.no_grad():
        pooled_a, tokens_a = encoders[0](states, rightwards)
        pooled_b, tokens_b = encoders[0](same_states, leftwards)
        torch.testing.assert_close(pooled_a, pooled_b)  # pooled frame states cannot tell the two motions apart
        pooled_a, tokens_a = encoders[4](states, rightwards)
        pooled_b, tokens_b = encoders[4](same_states, leftwards)
    assert tokens_a.shape == (1, 4, 4, 32)
    assert (pooled_a - pooled_b).abs().max() > 1e-3
    # Not only the moved tokens differ: the background tokens, equal in both clips, now read the motion too.
    assert (tokens_a[0, 0, 1:3] - tokens_b[0, 0, 1:3]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="gives 5 tokens per frame but config.video_temporal_tokens is 4"):
        encoders[4](states, torch.zeros(1, 4, 5, 32))


def test_the_all_token_temporal_encoder_trains_saves_and_checks_its_config(tmp_path):
    torch.manual_seed(0)
    config = _clip_tower_config("hybrid", video_temporal_tokens=CLIP_TOKENS, num_labels=3)
    model = MMForVisualQuestionAnswering(config)
    inputs = MMModelTester(batch_size=2).get_inputs()
    inputs = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=_clips())
    model(**inputs, labels=torch.tensor([0, 2])).loss.backward()
    encoder = model.mm.temporal_encoder
    assert encoder.spatial_embedding.shape == (1, 1, CLIP_TOKENS, 32)
    assert encoder.spatial_embedding.grad.abs().sum() > 0 and encoder.frame_embedding.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    loaded = MMForVisualQuestionAnswering.from_pretrained(tmp_path).eval()
    assert loaded.config.video_temporal_tokens == CLIP_TOKENS
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model.eval()(**inputs).logits)
    with pytest.raises(ValueError, match="video_temporal_tokens=4 needs video_temporal_layers"):
        _clip_tower_config(layers=0, video_temporal_tokens=4)
    with pytest.raises(ValueError, match="video_temporal_tokens must be a non-negative integer"):
        _clip_tower_config(video_temporal_tokens=-1)


def test_a_bottleneck_temporal_encoder_runs_its_layers_at_the_given_width_trains_and_round_trips(tmp_path):
    torch.manual_seed(0)
    config = _clip_tower_config("hybrid", video_temporal_tokens=CLIP_TOKENS, video_temporal_hidden_size=16,
                                num_labels=3)
    model = MMForVisualQuestionAnswering(config)
    encoder = model.mm.temporal_encoder
    assert (encoder.down.in_features, encoder.down.out_features) == (32, 16)
    assert (encoder.up.in_features, encoder.up.out_features) == (16, 32)
    assert encoder.layers[0].mlp.fc1.in_features == 16 and encoder.frame_embedding.shape[-1] == 32
    assert not encoder.up.weight.any() and not encoder.up.bias.any()
    full = MMForVisualQuestionAnswering(_clip_tower_config("hybrid", video_temporal_tokens=CLIP_TOKENS, num_labels=3))
    assert sum(p.numel() for p in encoder.parameters()) < sum(p.numel() for p in full.mm.temporal_encoder.parameters())
    inputs = MMModelTester(batch_size=2).get_inputs()
    inputs = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=_clips())
    model(**inputs, labels=torch.tensor([0, 2])).loss.backward()
    # `up` starts at zero, so the bottleneck gets no gradient in the first step, `up` does; once it moves, the rest
    # learns (the layers' residual branches first, as in any zero-initialised layer).
    assert encoder.up.weight.grad.abs().sum() > 0 and not encoder.down.weight.grad.any()
    with torch.no_grad():
        encoder.up.weight.normal_(0, 0.2)
    model.zero_grad()
    model(**inputs, labels=torch.tensor([0, 2])).loss.backward()
    assert encoder.down.weight.grad.abs().sum() > 0 and encoder.layers[0].mlp.fc2.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    loaded = MMForVisualQuestionAnswering.from_pretrained(tmp_path).eval()
    assert loaded.config.video_temporal_hidden_size == 16
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model.eval()(**inputs).logits)
    with pytest.raises(ValueError, match="video_temporal_hidden_size=16 needs video_temporal_layers"):
        _clip_tower_config(layers=0, video_temporal_hidden_size=16)
    for bad in (0, -8, 1.5, True):
        with pytest.raises(ValueError, match="video_temporal_hidden_size must be a positive integer or None"):
            _clip_tower_config(video_temporal_hidden_size=bad)


def _moving_square(rightwards: bool, frames: int = 4, size: int = 16) -> torch.Tensor:
    """`(1, T, 3, size, size)`: a 4-px bright square stepping 2 px a frame to the right (or the left) across pixel
    columns 1-10 and rows 6-9, on black (grid cells of 4 px: rows 1-2, columns 0-2)."""
    clip = torch.zeros(1, frames, 3, size, size)
    for t in range(frames):
        x = 1 + 2 * t if rightwards else 1 + 2 * (frames - 1 - t)
        clip[0, t, :, 6:10, x : x + 4] = 1.0
    return clip


def test_the_motion_embedding_reads_the_way_pixels_move_where_the_tower_tokens_do_not():
    torch.manual_seed(0)
    config = _clip_tower_config(layers=1, video_temporal_tokens=CLIP_TOKENS, video_temporal_hidden_size=16,
                                video_motion_embedding=True)
    encoder = MMFrameTemporalEncoder(config)
    assert (encoder.grid, encoder.leading) == (4, True)  # [CLS] + a 4x4 grid
    assert encoder.motion_embedding.in_features == 3 * 8 * 8
    with torch.no_grad():
        for parameter in (encoder.motion_embedding.weight, encoder.up.weight, encoder.layers[0].mlp.fc2.weight):
            parameter.normal_(0, 0.2)
    encoder.eval()
    tokens = torch.randn(1, 1, 1, 32).expand(1, FRAMES, CLIP_TOKENS, 32)  # a tower that sees no difference at all
    right, left = _moving_square(True), _moving_square(False)
    with torch.no_grad():
        pooled_right, states_right = encoder(tokens.mean(2), tokens, right)
        pooled_left, states_left = encoder(tokens.mean(2), tokens, left)
        pooled_still, _ = encoder(tokens.mean(2), tokens, right[:, :1].expand_as(right))
    assert (pooled_right - pooled_left).abs().max() > 1e-3
    assert (states_right - states_left).abs().max() > 1e-3
    # The embedding itself moves only for the cells the square crosses (grid rows 1-2, columns 0-2, after [CLS]) and
    # the frames after the first: elsewhere it is zero.
    with torch.no_grad():
        raw = encoder._motion(right).reshape(FRAMES, CLIP_TOKENS, -1)
    assert not raw[:, 0].any()  # [CLS] has no cell
    motion = raw.abs().amax(-1)  # (T, N)
    assert motion[0].max() == 0
    cells = {divmod(i - 1, 4) for i in range(1, CLIP_TOKENS) if motion[1:, i].max() > 0}
    assert cells == {(row, col) for row in (1, 2) for col in (0, 1, 2)}
    # A still clip (no change between frames) gets no motion embedding: it encodes as without one.
    no_motion = MMFrameTemporalEncoder(config)
    no_motion.load_state_dict(encoder.state_dict())
    no_motion.motion_embedding = None
    with torch.no_grad():
        torch.testing.assert_close(pooled_still, no_motion.eval()(tokens.mean(2), tokens)[0])
    with pytest.raises(ValueError, match="needs the clip's pixel values"):
        encoder(tokens.mean(2), tokens)


def test_the_motion_embedding_trains_round_trips_and_checks_its_config(tmp_path):
    torch.manual_seed(0)
    config = _clip_tower_config("hybrid", video_temporal_tokens=CLIP_TOKENS, video_temporal_hidden_size=16,
                                video_motion_embedding=True, num_labels=3)
    model = MMForVisualQuestionAnswering(config)
    assert not model.mm.temporal_encoder.motion_embedding.weight.any()  # zero-initialised, like every new branch
    with torch.no_grad():
        model.mm.temporal_encoder.up.weight.normal_(0, 0.2)
        model.mm.temporal_encoder.layers[0].mlp.fc2.weight.normal_(0, 0.2)
    inputs = MMModelTester(batch_size=2).get_inputs()
    inputs = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=_clips())
    model(**inputs, labels=torch.tensor([0, 2])).loss.backward()
    assert model.mm.temporal_encoder.motion_embedding.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    loaded = MMForVisualQuestionAnswering.from_pretrained(tmp_path).eval()
    assert loaded.config.video_motion_embedding is True
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model.eval()(**inputs).logits)
    with pytest.raises(ValueError, match="video_motion_embedding needs video_temporal_tokens > 0"):
        _clip_tower_config(video_motion_embedding=True)
    with pytest.raises(ValueError, match="video_motion_embedding must be True or False"):
        _clip_tower_config(video_temporal_tokens=CLIP_TOKENS, video_motion_embedding="yes")
    with pytest.raises(ValueError, match="6 tokens per frame to form a square grid"):
        MMFrameTemporalEncoder(_clip_tower_config(video_temporal_tokens=6, video_motion_embedding=True))
    assert MMFrameTemporalEncoder(_clip_tower_config(video_temporal_tokens=4, video_motion_embedding=True)).grid == 2


def test_a_vqa_head_with_the_temporal_encoder_trains_and_checks_its_inputs():
    torch.manual_seed(0)
    config = _clip_tower_config("hybrid", num_labels=3)
    model = MMForVisualQuestionAnswering(config)
    inputs = MMModelTester(batch_size=2).get_inputs()
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=_clips(),
                labels=torch.tensor([0, 2]))
    out.loss.backward()
    assert model.mm.temporal_encoder.frame_embedding.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="video_max_frames"):
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=_clips(frames=9))
    with pytest.raises(ValueError, match="built-in ViT models time itself"):
        MMModelTester().get_config("hybrid", video_temporal_layers=1)
    with pytest.raises(ValueError, match="video_temporal_layers"):
        _clip_tower_config(layers=-1)


# -- tubelet embedding -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("video_attention", ["joint", "divided"])
def test_a_tubelet_token_is_the_mean_frame_patch_plus_a_map_of_the_stacked_frames(video_attention):
    model = _vision(video_attention, tubelet_size=2)
    embeddings = model.embeddings
    assert embeddings.tubelet_embedding.in_channels == 6 and not embeddings.tubelet_embedding.weight.any()
    assert embeddings.temporal_embedding.shape == (1, FRAMES // 2, 1, 32)  # one per token frame
    _train_temporal_parts(model)
    with torch.no_grad():
        embeddings.tubelet_embedding.weight.normal_(std=0.1)
        clips = _clips()
        tokens, frames = embeddings(clips)
        assert frames == FRAMES // 2 and tokens.shape == (2, 1 + 2 * 16, 32)
        for t in range(2):  # token frame t covers input frames 2t and 2t+1
            pair = clips[:, 2 * t : 2 * t + 2]
            expected = embeddings.patch_embedding(pair.mean(1)) + embeddings.tubelet_embedding(pair.flatten(1, 2))
            expected = expected.flatten(2).transpose(1, 2) + embeddings.position_embedding[:, 1:]
            expected = expected + embeddings.temporal_embedding[:, t]
            torch.testing.assert_close(tokens[:, 1 + 16 * t : 1 + 16 * (t + 1)], expected)
        # Within a tubelet, order matters through the stacked map: swapping its two frames changes the output.
        swapped = model(clips[:, [1, 0, 3, 2]]).pooler_output
        assert (model(clips).pooler_output - swapped).abs().max() > 1e-3


def test_an_image_checkpoint_loads_into_a_tubelet_model_and_embeds_images_and_still_clips_the_same(tmp_path):
    image_model = _vision("joint", num_frames=1)
    image_model.save_pretrained(tmp_path)
    video_model, info = MMVisionModel.from_pretrained(
        tmp_path, num_frames=FRAMES, tubelet_size=2, output_loading_info=True
    )
    assert not info["unexpected_keys"]
    assert set(info["missing_keys"]) == {"embeddings.tubelet_embedding.weight", "embeddings.temporal_embedding"}
    images = _clips()[:, 0]
    with torch.no_grad():
        expected = image_model(images).last_hidden_state
        torch.testing.assert_close(video_model.eval()(images).last_hidden_state, expected)
        # A still clip of one tubelet is the image; untrained, a longer clip's tubelet embeds its mean frame.
        torch.testing.assert_close(video_model(images[:, None].expand(-1, 2, -1, -1, -1)).last_hidden_state, expected)
        clips = _clips()
        tokens, _ = video_model.embeddings(clips)
        image_tokens, _ = image_model.embeddings(clips[:, 2:].mean(1))
        torch.testing.assert_close(tokens[:, 17:], image_tokens[:, 1:])


def test_tubelet_sizes_that_do_not_divide_the_frames_are_refused():
    with pytest.raises(ValueError, match=r"num_frames \(6\) must be a multiple of tubelet_size \(4\)"):
        MMVisionConfig(num_frames=6, tubelet_size=4)
    with pytest.raises(ValueError, match="tubelet_size"):
        MMVisionConfig(tubelet_size=0)
    model = _vision(tubelet_size=2)
    with pytest.raises(ValueError, match=r"pixel_values has 3 frames, not a multiple of vision_config.tubelet_size \(2\)"):
        model(_clips(frames=3))
    with pytest.raises(ValueError, match="pixel_values has 6 frames but vision_config.num_frames is 4"):
        model(_clips(frames=6))


def test_tubelet_clips_train_with_flip_masks_and_pretrain():
    """FLIP keep indices count token frames (T / tubelet_size), and the pretraining model trains on clips."""
    tester = MMModelTester(num_frames=4)
    config = tester.get_config(fusion="late", objectives=["itc"], image_mask_ratio=0.5)
    config.vision_config.tubelet_size = 2
    torch.manual_seed(0)
    model = MMForPreTraining(config).train()
    inputs = tester.get_inputs(video=True)
    grid = (tester.image_size // tester.patch_size) ** 2
    keep = model._vision_keep_indices(inputs["pixel_values"], None)
    assert keep.shape[1] == grid and int(keep.max()) < 2 * grid  # half of 2 token frames' patches
    loss = model(**inputs, return_loss=True).loss
    loss.backward()
    assert torch.isfinite(loss) and model.mm.vision_model.embeddings.tubelet_embedding.weight.grad.abs().sum() > 0
