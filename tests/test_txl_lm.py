"""txl_lm in process: streaming = one long forward, document isolation, per-mode caches,
checkpointed cache, incremental decoding, fast path = reference, build-time errors."""
import pytest
import torch

from helpers import build_tiny_lm

W, L = 8, 16  # window, segment


def build(seed=0, **options):
    return build_tiny_lm("txl_sliding_window_tiny", L, seed, **{**dict(window_length=W, dropout=0.0,
                                                                         attention_dropout=0.0), **options})


def tokens(B, T, seed=1):
    return torch.randint(4, 40, (B, T), generator=torch.Generator().manual_seed(seed))


def stream(model, x, starts):
    """Feed (B, n·L) tokens as n segments; starts[s] is the start_of_sequence of segment s."""
    outs = [model(x[:, s * L:(s + 1) * L], start_of_sequence=torch.tensor(start))[0]
            for s, start in enumerate(starts)]
    return torch.cat(outs, 1)


def test_streamed_segments_equal_one_long_forward():
    model = build()
    x = tokens(2, 3 * L)
    whole = model(x)[0]  # outside a stream: one call, the window slides over everything
    streamed = stream(model, x, [[True, True], [False, False], [False, False]])
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=1e-5)


def test_a_document_start_isolates_documents():
    model = build()
    doc1a, doc1b, doc2 = tokens(1, L, 1), tokens(1, L, 2), tokens(1, L, 3)
    model(doc1a, start_of_sequence=torch.tensor([True]))
    after_1a = model(doc2, start_of_sequence=torch.tensor([True]))[0]
    model(doc1b, start_of_sequence=torch.tensor([True]))
    after_1b = model(doc2, start_of_sequence=torch.tensor([True]))[0]
    assert torch.equal(after_1a, after_1b)
    continued = model(doc2, start_of_sequence=torch.tensor([False]))[0]  # the cache does matter
    assert not torch.allclose(continued, after_1b)


def test_the_cache_holds_exactly_the_last_window():
    model = build()
    x = tokens(2, L)
    model(x, start_of_sequence=torch.tensor([True, True]))
    for layer in model.decoder.layers:
        k_cache, v_cache = layer.attention.cache.get(False)
        assert k_cache.shape == (2, 4, W, 16)
    # the cache of layer 0 is the projection of the segment's last W embeddings
    attention = model.decoder.layers[0].attention
    _, k, v = attention.project(attention_input_of_layer0(model, x))
    assert torch.equal(attention.cache.get(False)[0], k[:, :, -W:])
    assert torch.equal(attention.cache.get(False)[1], v[:, :, -W:])


def attention_input_of_layer0(model, x):
    layer = model.decoder.layers[0]
    return layer.attention_norm(model.decoder.embed_tokens(x))


def test_evaluation_leaves_the_training_cache_bit_identical():
    model = build().train()
    x = tokens(2, L)
    model(x, start_of_sequence=torch.tensor([True, True]))
    before = [t.clone() for layer in model.decoder.layers for t in layer.attention.cache.get(True)]
    model.eval()
    with torch.no_grad():
        model(tokens(3, L, 5), start_of_sequence=torch.tensor([True, True, True]))
        model(tokens(3, L, 6), start_of_sequence=torch.tensor([False, False, False]))
    after = [t for layer in model.decoder.layers for t in layer.attention.cache.get(True)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert model.decoder.layers[0].attention.cache.get(False)[0].shape[0] == 3


def test_a_checkpoint_holds_the_training_cache_and_not_the_evaluation_one():
    model = build().train()
    x = tokens(2, 2 * L)
    model(x[:, :L], start_of_sequence=torch.tensor([True, True]))
    state = model.state_dict()
    restored = build(seed=7).train()
    restored.load_state_dict(state)
    assert restored.decoder.layers[0].attention.cache.get(False) is None
    model.eval(), restored.eval()
    for m in (model, restored):  # move the training cache into evaluation: same continuation
        for layer in m.decoder.layers:
            layer.attention.cache.set(False, layer.attention.cache.get(True))
    want = model(x[:, L:], start_of_sequence=torch.tensor([False, False]))[0]
    got = restored(x[:, L:], start_of_sequence=torch.tensor([False, False]))[0]
    assert torch.equal(want, got)


def test_another_number_of_lanes_mid_stream_is_refused():
    model = build()
    model(tokens(2, L), start_of_sequence=torch.tensor([True, True]))
    with pytest.raises(RuntimeError, match="--batch-size"):
        model(tokens(3, L), start_of_sequence=torch.tensor([False, True, False]))


@pytest.mark.parametrize("xl_cache", [True, False])
def test_incremental_decoding_equals_the_full_forward(xl_cache):
    model = build(xl_cache=xl_cache)
    x = tokens(2, 2 * L + 3)
    full = model(x)[0]
    state = {}
    steps = [model(x[:, :t + 1], incremental_state=state)[0] for t in range(x.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_reordering_the_incremental_state_follows_the_beams():
    model = build()
    x = tokens(2, 5)
    state = {}
    for t in range(5):
        model(x[:, :t + 1], incremental_state=state)
    model.decoder.reorder_incremental_state_scripting(state, torch.tensor([1, 1]))
    nxt = torch.cat([x[[1, 1]], tokens(2, 1, 9)[[0, 0]]], 1)
    got = model(nxt, incremental_state=state)[0][:, -1]
    torch.testing.assert_close(got[0], got[1])
    torch.testing.assert_close(got[0], model(nxt[:1])[0][0, -1], atol=1e-5, rtol=1e-5)


def test_fast_path_equals_reference_model():
    model = build(relative_position_max_distance=20)
    x = tokens(2, 2 * L)
    fast = stream(model, x, [[True, True], [False, False]])
    model.reset_caches()
    ref = torch.cat([model(x[:, s * L:(s + 1) * L], start_of_sequence=torch.tensor([s == 0] * 2), reference=True)[0]
                     for s in range(2)], 1)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_no_cache_variant_forgets_the_previous_segment():
    model = build(xl_cache=False)
    x = tokens(1, L)
    a = model(x, start_of_sequence=torch.tensor([False]))[0]
    model(tokens(1, L, 4), start_of_sequence=torch.tensor([True]))
    assert torch.equal(model(x, start_of_sequence=torch.tensor([False]))[0], a)


@pytest.mark.parametrize("options, message", [
    (dict(window_length=5), "--tokens-per-sample 16 must be a multiple of --window-length 5"),
    (dict(decoder_attention_heads=0), "--decoder-attention-heads must be positive"),
    (dict(dropout=1.0), "--dropout must be in"),
])
def test_inconsistent_options_fail_at_build_time(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build(**options)


def test_streamed_segment_not_made_of_whole_windows_is_refused():
    model = build()
    with pytest.raises(ValueError, match="--window-length"):
        model(tokens(1, L - 3), start_of_sequence=torch.tensor([True]))
