"""memorizing_lm in process: the kNN search (planted neighbours, chunked = full reference), the
memory's life (reset at a document start, one copy per mode, never the current segment, ring
wrap-around), fast path = reference for the whole model, incremental decoding, build-time
errors; then one short fairseq-train and a fairseq-eval-lm of its checkpoint."""
import math
import re

import pytest
import torch

import fairseq_ext  # noqa: F401  (registers)
from fairseq_ext.modules.knn_memory import (bucketed_topk, empty_memory, exact_topk, filled_slots,
                                            reference_bucketed_topk, reference_exact_topk, retrieve,
                                            retrieve_reference, write)
from fairseq_ext.modules.window_attention import unit_normalise
from helpers import (USER_DIR, assert_training_lowered_the_loss, build_tiny_lm, run_fairseq, saved_extra_states,
                     train_long_document_lm)

W, L = 8, 16  # window, segment


def build(seed=0, segment=L, **options):
    return build_tiny_lm("memorizing_tiny", segment, seed, **{**dict(
        window_length=W, memory_size=32, memory_neighbors=4, dropout=0.0, attention_dropout=0.0), **options})


def tokens(B, T, seed=1):
    return torch.randint(4, 40, (B, T), generator=torch.Generator().manual_seed(seed))


def stream(model, x, starts, segment=L, **kwargs):
    """Feed (B, n·L) tokens as n segments; starts[s] is the start_of_sequence of segment s."""
    return torch.cat([model(x[:, s * segment:(s + 1) * segment], start_of_sequence=torch.tensor(start), **kwargs)[0]
                      for s, start in enumerate(starts)], 1)


def memory_of(model, training=False):
    return model.decoder.layers[-1].attention.memory.get(training)


def random_unit(*shape, seed=0):
    return unit_normalise(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)))


# ---- the search ----------------------------------------------------------------------------

def test_planted_neighbours_are_found_exactly_and_one_per_bucket():
    N, T, D, d, k = 1, 3, 24, 8, 4
    keys, queries = random_unit(N, D, d), random_unit(N, T, d, seed=1)
    planted = [5, 10, 19]  # slot planted[t] holds a copy of query t: its best neighbour
    for t, slot in enumerate(planted):
        keys[0, slot] = queries[0, t]
    filled = torch.ones(N, D, dtype=torch.bool)
    exact = exact_topk(queries, keys, filled, k, chunk=5)
    scores = (queries @ keys.transpose(1, 2))[0]
    for t in range(T):
        assert exact[0, t, 0] == planted[t]
        assert set(exact[0, t].tolist()) == set(scores[t].argsort(descending=True)[:k].tolist())
    bucketed = bucketed_topk(queries, keys, filled, k, chunk=8)
    for t in range(T):
        assert sorted(s % k for s in bucketed[0, t].tolist()) == list(range(k))  # one per bucket
        for j, slot in enumerate(bucketed[0, t].tolist()):
            assert slot == j + k * int(scores[t, j::k].argmax())
        assert planted[t] in bucketed[0, t].tolist()


def test_empty_slots_lose_to_every_filled_slot():
    N, T, D, d, k = 2, 4, 16, 8, 4
    keys, queries = random_unit(N, D, d), random_unit(N, T, d, seed=1)
    filled = torch.zeros(N, D, dtype=torch.bool)
    filled[:, [1, 6, 11]] = True  # three filled slots, in buckets 1, 2 and 3
    exact = exact_topk(queries, keys, filled, k, chunk=3)
    assert all(set([1, 6, 11]) <= set(row.tolist()) for row in exact.view(-1, k))
    bucketed = bucketed_topk(queries, keys, filled, k, chunk=4)
    assert (bucketed[..., 1:] == torch.tensor([1, 6, 11])).all()  # buckets 1, 2, 3 hold one filled slot each
    assert (bucketed[..., 0] == 0).all()  # bucket 0 has none: its first (empty) slot


@pytest.mark.parametrize("method, chunk", [("exact", 7), ("exact", 64), ("bucketed", 12), ("bucketed", 3)])
def test_chunked_retrieval_equals_the_full_reference(method, chunk):
    B, H, T, D, d, k = 2, 3, 5, 40, 8, 4
    keys, values, _ = write(empty_memory(B, H, D, d, "cpu"), random_unit(B, H, D, d, seed=2), torch.randn(B, H, D, d))
    memory = (keys, values, torch.tensor([24, 40]))  # lane 0: slots 24... count as empty, whatever they hold
    queries = random_unit(B, H, T, d, seed=4)
    fast = retrieve(queries, memory, k, method, chunk=chunk)
    slow = retrieve_reference(queries, memory, k, method)
    flat = lambda t: t.reshape(B * H, D, d)
    select = {"exact": exact_topk, "bucketed": bucketed_topk}[method]
    reference = {"exact": reference_exact_topk, "bucketed": reference_bucketed_topk}[method]
    q = queries.reshape(B * H, T, d)
    got = select(q, flat(memory[0]), filled_slots(memory), k, chunk)
    want = reference(q, flat(memory[0]), filled_slots(memory), k)
    assert torch.equal(got, want)  # random unit keys: no ties, so the same slots in the same order
    assert (got.view(B, H, T, k)[0] < 24).all()  # lane 0's decoys beyond its count are never chosen
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


def test_the_ring_wraps_around_and_counts_per_lane():
    B, H, D, d = 2, 1, 8, 2
    memory = empty_memory(B, H, D, d, "cpu")
    first = torch.arange(B * H * 6 * d, dtype=torch.float).view(B, H, 6, d)
    memory = write(memory, first, first)
    memory = write(memory, -first[:, :, :4], -first[:, :, :4])  # slots 6, 7, 0, 1
    keys, _, count = memory
    assert count.tolist() == [10, 10]
    assert torch.equal(keys[:, :, [6, 7, 0, 1]], -first[:, :, :4])
    assert torch.equal(keys[:, :, 2:6], first[:, :, 2:6])
    assert filled_slots(memory).all()


# ---- the model -------------------------------------------------------------------------------

@pytest.mark.parametrize("topk", ["exact", "bucketed"])
def test_fast_path_equals_reference_model_through_a_wrapped_memory(topk):
    model = build(memory_topk=topk, relative_position_max_distance=20)
    x = tokens(2, 4 * L)  # 4 segments: the 32-slot memory wraps in the 3rd
    starts = [[True, True], [False, False], [False, True], [False, False]]
    fast = stream(model, x, starts)
    model.reset_caches()
    reference = stream(model, x, starts, reference=True)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)


def test_the_memory_matters_and_a_document_start_empties_it():
    model = build()
    doc1a, doc1b, doc2 = tokens(1, 2 * L, 1), tokens(1, 2 * L, 2), tokens(1, 2 * L, 3)
    doc2_starts = [[True], [False]]
    stream(model, doc1a, doc2_starts)
    after_1a = stream(model, doc2, doc2_starts)
    assert memory_of(model)[2].tolist() == [2 * L]
    stream(model, doc1b, doc2_starts)
    after_1b = stream(model, doc2, doc2_starts)
    assert torch.equal(after_1a, after_1b)
    # the memory (not only the XL cache) carries doc 1 into a continued doc 2: W < L, so the cache
    # holds only the last W tokens, but the memory holds all of doc 1
    model.decoder.layers[-1].attention.memory.clear()
    model(doc1a[:, :L], start_of_sequence=torch.tensor([True]))
    with_memory = model(doc2[:, :L], start_of_sequence=torch.tensor([False]))[0]
    model(doc1a[:, :L], start_of_sequence=torch.tensor([True]))
    for t in memory_of(model):  # the same cache, an emptied memory
        t.zero_()
    without = model(doc2[:, :L], start_of_sequence=torch.tensor([False]))[0]
    assert not torch.allclose(with_memory, without)


def test_the_memory_never_holds_the_current_segment():
    model = build()
    x = tokens(1, 2 * L)
    changed = x.clone()
    changed[0, -1] = 4 if x[0, -1] != 4 else 5  # the last token of the second segment
    outputs = []
    for y in (x, changed):
        model.reset_caches()
        outputs.append(stream(model, y, [[True], [False]]))
    # no earlier query of the segment saw the last token's key, through the window or the memory
    torch.testing.assert_close(outputs[1][:, :-1], outputs[0][:, :-1], atol=1e-6, rtol=0)
    assert not torch.allclose(outputs[1][:, -1], outputs[0][:, -1])
    model.reset_caches()
    model(x[:, :L], start_of_sequence=torch.tensor([True]))
    after_first = [t.clone() for t in memory_of(model)]
    assert after_first[2].tolist() == [L] and not after_first[0][:, :, L:].any()
    model(x[:, L:], start_of_sequence=torch.tensor([False]))
    keys, values, count = memory_of(model)
    assert count.tolist() == [2 * L]
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(1, 4, 2 * L))  # unit-normalised keys
    assert torch.equal(keys[:, :, :L], after_first[0][:, :, :L]) and torch.equal(values[:, :, :L], after_first[1][:, :, :L])


def test_evaluation_leaves_the_training_memory_bit_identical():
    model = build().train()
    model(tokens(2, L), start_of_sequence=torch.tensor([True, True]))
    before = [t.clone() for t in memory_of(model, training=True)]
    model.eval()
    with torch.no_grad():
        model(tokens(3, L, 5), start_of_sequence=torch.tensor([True, True, True]))
        model(tokens(3, L, 6), start_of_sequence=torch.tensor([False, False, False]))
    after = memory_of(model, training=True)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert memory_of(model)[0].shape == (3, 4, 32, 16)


def test_gradients_reach_the_gate_and_scale_but_the_memory_is_constant():
    model = build().train()
    x = tokens(2, 2 * L)
    model(x[:, :L], start_of_sequence=torch.tensor([True, True]))
    model(x[:, L:], start_of_sequence=torch.tensor([False, False]))[0].sum().backward()
    attention = model.decoder.layers[-1].attention
    assert attention.gate_bias.grad.abs().sum() > 0 and attention.scale.grad.abs().sum() > 0
    assert not any(t.requires_grad for t in memory_of(model, training=True))


def test_a_checkpoint_holds_the_training_memory():
    model = build().train()
    model(tokens(2, L), start_of_sequence=torch.tensor([True, True]))
    restored = build(seed=7).train()
    restored.load_state_dict(model.state_dict())
    for a, b in zip(memory_of(model, True), memory_of(restored, True)):
        assert torch.equal(a, b)
    assert memory_of(restored) is None


def test_incremental_decoding_equals_streaming_segments_of_one_window():
    model = build(segment=W, memory_size=16)
    x = tokens(2, 4 * W)  # the 16-slot memory fills after 2 windows and wraps after 3
    streamed = stream(model, x, [[True, True]] + [[False, False]] * 3, segment=W)
    state = {}
    steps = [model(x[:, :t + 1], incremental_state=state)[0] for t in range(x.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), streamed, atol=1e-5, rtol=1e-5)
    model.decoder.reorder_incremental_state_scripting(state, torch.tensor([1, 1]))
    nxt = model(torch.cat([x[[1, 1]], x[:1, :1].expand(2, 1)], 1), incremental_state=state)[0]
    torch.testing.assert_close(nxt[0], nxt[1])


def test_outside_a_stream_the_memory_is_empty():
    model = build()
    x = tokens(2, L)
    assert torch.equal(model(x)[0], model(x, start_of_sequence=torch.tensor([True, True]))[0])
    assert memory_of(model)[2].tolist() == [L, L]  # only the streamed call wrote


@pytest.mark.parametrize("options, message", [
    (dict(memory_size=24), "--memory-size 24 must be a multiple of --tokens-per-sample 16"),
    (dict(memory_neighbors=64), "--memory-neighbors 64 must not exceed --memory-size 32"),
    (dict(memory_size=48, memory_neighbors=5), "--memory-topk bucketed needs --memory-size 48 to be a multiple"),
    (dict(memory_layers="2"), "--memory-layers index 2 is out of range for --decoder-layers 2"),
    (dict(memory_layers="-3"), "--memory-layers index -3 is out of range"),
    (dict(memory_layers="0,-2"), "names a layer twice"),
    (dict(memory_topk="faiss"), "--memory-topk must be one of exact, bucketed"),
])
def test_inconsistent_options_fail_at_build_time(options, message):
    with pytest.raises(ValueError, match=message):
        build(**options)


def test_exact_topk_accepts_a_memory_size_that_is_not_a_multiple_of_k():
    model = build(memory_size=48, memory_neighbors=5, memory_topk="exact")
    x = tokens(1, 3 * L)
    torch.testing.assert_close(stream(model, x, [[True], [False], [False]]),
                               (model.reset_caches(), stream(model, x, [[True], [False], [False]], reference=True))[1],
                               atol=1e-5, rtol=1e-5)


def test_memory_layers_count_from_the_top():
    model = build(decoder_layers=6, memory_layers="-4,5")
    kinds = [type(layer.attention).__name__ for layer in model.decoder.layers]
    assert kinds == ["WindowedSelfAttention"] * 2 + ["MemoryAttention"] + ["WindowedSelfAttention"] * 2 \
        + ["MemoryAttention"]


# ---- real fairseq processes ------------------------------------------------------------------

SEGMENT = 64  # the tiny arch: W 32, a 256-slot memory in its top layer, k 32


@pytest.fixture(scope="module")
def trained(book_data, tmp_path_factory):
    return train_long_document_lm(book_data, tmp_path_factory.mktemp("memorizing"), "memorizing_tiny", SEGMENT,
                                  updates=12)


def test_fairseq_train_lowers_the_loss_and_saves_the_training_memory(trained):
    save, output = trained
    assert_training_lowered_the_loss(output, updates=12, window=3, margin=0.3)
    memory = saved_extra_states(save, "memory._extra_state")
    assert len(memory) == 1  # the top layer of 2
    keys, values, count = memory[0]["train"]
    assert keys.shape == values.shape == (2, 4, 256, 16)
    assert (count > 0).all() and (count % SEGMENT == 0).all()


def test_fairseq_eval_lm_streams_the_test_books_through_the_memory(trained, book_data):
    save, _ = trained
    proc = run_fairseq(["fairseq-eval-lm", str(book_data), "--path", str(save / "checkpoint_last.pt"),
                        "--user-dir", USER_DIR, "--task", "long_document_lm", "--gen-subset", "test",
                        "--batch-size", "2", "--tokens-per-sample", str(SEGMENT), "--cpu"])
    bits = float(re.search(r"Loss \(base 2\): ([0-9.]+)", proc.stdout + proc.stderr).group(1))
    assert bits < math.log2(500)  # better than uniform over the 500-piece vocabulary
