"""block_recurrent_lm in process: fast path = reference (with and without feedback), gradients
reach every parameter of the state path, a document start resets the state, evaluation leaves
the training state alone, every gate x update trains, a checkpoint reloads, generation scores as
the full forward does, build-time errors; then fairseq-train, fairseq-eval-lm / eval.books,
.sample(), 2 CPU processes and fairseq-hydra-train on the tiny books."""
import math
import re

import pytest
import torch
import torch.nn.functional as F

import fairseq_ext  # noqa: F401  (registers)
from fairseq_ext.modules.block_recurrence import GATE_TYPES, UPDATE_FORMS, StateGate, StatePath
from helpers import (REPO, USER_DIR, assert_training_lowered_the_loss, build_tiny_lm, json_log_records,
                     long_document_train_args, run_fairseq, sample_from_pretrained, saved_extra_states, score_books,
                     train_long_document_lm, train_on_two_cpu_processes)

W, L, M = 8, 16, 4  # window, segment (2 windows), states


def build(seed=0, segment=L, **options):
    return build_tiny_lm("block_recurrent_tiny", segment, seed, **{**dict(
        window_length=W, num_states=M, dropout=0.0, attention_dropout=0.0), **options})


def tokens(B, T, seed=1):
    return torch.randint(4, 40, (B, T), generator=torch.Generator().manual_seed(seed))


def stream(model, x, starts, **kwargs):
    """Feed (B, n·L) tokens as n segments; starts[s] is the start_of_sequence of segment s."""
    return torch.cat([model(x[:, s * L:(s + 1) * L], start_of_sequence=torch.tensor(start), **kwargs)[0]
                      for s, start in enumerate(starts)], 1)


def recurrent(model):
    return next(layer for layer in model.decoder.layers if hasattr(layer.attention, "recurrence"))


def state_of(model, training=False):
    return recurrent(model).attention.state.get(training)


# ---- the state path ---------------------------------------------------------------------------

@pytest.mark.parametrize("gate, update", [("fixed", "skip"), ("lstm", "dual"), ("full", "single")])
def test_state_scan_equals_the_explicit_softmax_reference_in_values_and_gradients(gate, update):
    torch.manual_seed(0)
    path = StatePath(dim=16, num_heads=2, head_dim=8, ffn_dim=32, num_states=5, gate_type=gate, update_form=update)
    keys = F.normalize(torch.randn(3, 2, 4 * W, 8), dim=-1).requires_grad_()  # the cache and 3 windows
    values = torch.randn(3, 2, 4 * W, 8, requires_grad=True)
    results = []
    for reference in (False, True):
        state = path.initial[None].expand(3, -1, -1)
        read_k, read_v, final = path.scan(state, keys, values, W, reference=reference)
        loss = (read_k * read_v).sum() + final.square().sum()
        grads = torch.autograd.grad(loss, [keys, values, *path.parameters()])
        results.append((read_k, read_v, final, grads))
    assert results[0][0].shape == (3, 3, 2, 5, 8)  # (B, windows, H, M, d_h)
    for fast, slow in zip(results[0][:3] + results[0][3], results[1][:3] + results[1][3]):
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)


def test_gates_start_as_in_meliad():
    """fixed: b ~ N(0, 0.1), about half the state kept; lstm and full: b ~ N(0, 0.1) and a
    kernel of variance 0.1 / fan_in, so the forget gate starts near σ(1) and the input gate near σ(−1)."""
    torch.manual_seed(0)
    d, hidden = 512, 256
    fixed = StateGate("fixed", d, hidden)
    assert abs(fixed.bias.std().item() - 0.1) < 0.02 and abs(torch.sigmoid(fixed.bias).mean().item() - 0.5) < 0.01
    lstm = StateGate("lstm", d, hidden)
    assert abs(lstm.bias.std().item() - 0.1) < 0.02
    assert abs(lstm.weight.weight.var().item() - 0.1 / hidden) < 0.2 * 0.1 / hidden
    s, y, h = torch.ones(4, d), torch.ones(4, d), torch.randn(4, hidden)
    combined = lstm(s, torch.zeros_like(y), h)  # the forget gate alone
    assert abs(combined.mean().item() - torch.sigmoid(torch.tensor(1.0)).item()) < 0.02
    assert abs(lstm(torch.zeros_like(s), y, h).mean().item() - torch.sigmoid(torch.tensor(-1.0)).item()) < 0.02
    full = StateGate("full", d, hidden)
    assert full.bias.shape == (1, d) and abs(full(s, torch.zeros_like(y), h).mean().item() - 0.731) < 0.02
    assert torch.equal(StateGate("residual", d, hidden)(s, y, h), s + y)


# ---- the model -------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [dict(), dict(feedback=True), dict(gate_type="lstm", state_update="dual"),
                                     dict(gate_type="full", state_update="single", recurrent_layers="-1")])
def test_fast_path_equals_reference(options):
    model = build(**options)
    x = tokens(2, 3 * L)
    starts = [[True, True], [False, False], [False, True]]
    fast = stream(model, x, starts)
    fast_state = state_of(model)[0]
    model.reset_caches()
    reference = stream(model, x, starts, reference=True)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_state, state_of(model)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [dict(), dict(gate_type="lstm", state_update="dual"),
                                     dict(gate_type="full", state_update="single"), dict(feedback=True)])
def test_gradients_reach_every_parameter_of_the_state_path(options):
    """One backward over one segment of 2 windows: the second window reads S_1, so every weight
    of the recurrent layer (s₀, state IDs, projections, gates, scales) must get a gradient."""
    model = build(**options).train()
    logits = model(tokens(2, L), start_of_sequence=torch.tensor([True, True]))[0]
    F.cross_entropy(logits.flatten(0, 1), tokens(2, L, seed=2).flatten()).backward()
    layers = model.decoder.layers if options.get("feedback") else [recurrent(model)]
    for layer in layers:
        for name, parameter in layer.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert not any(t.requires_grad for t in state_of(model, training=True))


def test_a_segment_traces_as_one_graph():
    """No data-dependent control flow on the segment path: dynamo captures the whole forward in
    one graph (the loop over windows unrolls), outside a stream and for a streamed segment that
    continues the cached states, so torch.compile needs no graph break."""
    eager, traced = build(), build()
    x = tokens(2, 2 * L)
    compiled = torch.compile(lambda t, s=None: traced(t, start_of_sequence=s)[0], backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x[:, :L]), eager(x[:, :L])[0])
    for model in (eager, traced):
        model(x[:, :L], start_of_sequence=torch.tensor([True, True]))
    follow = torch.tensor([False, True])
    torch.testing.assert_close(compiled(x[:, L:], follow), eager(x[:, L:], start_of_sequence=follow)[0])
    torch.testing.assert_close(state_of(traced)[0], state_of(eager)[0])


def test_a_document_start_resets_the_state_per_lane():
    model = build()
    doc1a, doc1b, doc2, other = tokens(1, 2 * L, 1), tokens(1, 2 * L, 2), tokens(1, 2 * L, 3), tokens(1, 4 * L, 4)
    outputs = []
    for doc1 in (doc1a, doc1b):  # lane 0: doc 1 then doc 2; lane 1 streams one document throughout
        model.reset_caches()
        x = torch.cat([torch.cat([doc1, doc2], 1), other])
        outputs.append(stream(model, x, [[True, True], [False, False], [True, False], [False, False]]))
    assert not torch.allclose(outputs[0][0, :2 * L], outputs[1][0, :2 * L])
    assert torch.equal(outputs[0][0, 2 * L:], outputs[1][0, 2 * L:])  # every prediction on doc 2
    assert torch.equal(outputs[0][1], outputs[1][1])


def test_the_cached_state_carries_into_the_next_segment():
    model = build()
    x = tokens(2, 2 * L)
    model(x[:, :L], start_of_sequence=torch.tensor([True, True]))
    (state,) = state_of(model)
    assert state.shape == (2, M, 64) and not torch.allclose(state[0], recurrent(model).attention.recurrence.initial)
    carried = model(x[:, L:], start_of_sequence=torch.tensor([False, False]))[0]
    model(x[:, :L], start_of_sequence=torch.tensor([True, True]))
    recurrent(model).attention.state.set(False, (state.flip(1),))  # the same cache, another state
    assert not torch.allclose(carried, model(x[:, L:], start_of_sequence=torch.tensor([False, False]))[0])


def test_evaluation_leaves_the_training_state_bit_identical():
    model = build().train()
    model(tokens(2, L), start_of_sequence=torch.tensor([True, True]))
    before = [t.clone() for t in state_of(model, training=True)]
    model.eval()
    with torch.no_grad():
        model(tokens(3, L, 5), start_of_sequence=torch.tensor([True, True, True]))
        model(tokens(3, L, 6), start_of_sequence=torch.tensor([False, False, False]))
    assert all(torch.equal(a, b) for a, b in zip(before, state_of(model, training=True)))
    assert state_of(model)[0].shape == (3, M, 64)


@pytest.mark.parametrize("gate", GATE_TYPES)
@pytest.mark.parametrize("update", UPDATE_FORMS)
def test_every_gate_and_update_trains(gate, update):
    model = build(gate_type=gate, state_update=update, decoder_layers=1).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = tokens(2, 2 * L + 1)
    losses = []
    for _ in range(6):
        for s in range(2):
            logits = model(x[:, s * L:(s + 1) * L], start_of_sequence=torch.tensor([s == 0] * 2))[0]
            loss = F.cross_entropy(logits.flatten(0, 1), x[:, s * L + 1:(s + 1) * L + 1].flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert sum(losses[-2:]) < sum(losses[:2]) - 0.5, losses


def test_a_checkpoint_reloads_to_identical_outputs():
    model = build().train()
    x = tokens(2, 2 * L)
    model(x[:, :L], start_of_sequence=torch.tensor([True, True]))
    restored = build(seed=7).train()
    restored.load_state_dict(model.state_dict())
    assert torch.equal(state_of(model, True)[0], state_of(restored, True)[0]) and state_of(restored) is None
    follow = lambda m: m(x[:, L:], start_of_sequence=torch.tensor([False, False]))[0]
    assert torch.equal(follow(model), follow(restored))


@pytest.mark.parametrize("options", [dict(), dict(feedback=True, gate_type="lstm", state_update="dual")])
def test_generation_scores_equal_the_full_forward(options):
    model = build(**options)
    x = tokens(2, 3 * W + 3)  # the state is updated 3 times, the last window is partial
    full = model(x)[0]
    state = {}
    steps = torch.cat([model(x[:, :t + 1], incremental_state=state)[0] for t in range(x.shape[1])], 1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    model.decoder.reorder_incremental_state_scripting(state, torch.tensor([1, 1]))
    nxt = model(torch.cat([x[[1, 1]], x[:1, :1].expand(2, 1)], 1), incremental_state=state)[0]
    torch.testing.assert_close(nxt[0], nxt[1])


def test_outside_a_stream_is_a_new_document():
    model = build()
    x = tokens(2, L)
    assert torch.equal(model(x)[0], model(x, start_of_sequence=torch.tensor([True, True]))[0])
    assert state_of(model)[0].shape[0] == 2  # only the streamed call stored a state


@pytest.mark.parametrize("options, message", [
    (dict(segment=12), "--tokens-per-sample 12 must be a multiple of --window-length 8"),
    (dict(gate_type="sigmoid"), "--gate-type must be one of fixed, lstm, full, residual"),
    (dict(state_update="triple"), "--state-update must be one of single, dual, skip"),
    (dict(recurrent_layers="2"), "--recurrent-layers index 2 is out of range for --decoder-layers 2"),
    (dict(recurrent_layers="-3"), "--recurrent-layers index -3 is out of range"),
    (dict(recurrent_layers="top"), "--recurrent-layers 'top'"),
    (dict(num_states=0), "--num-states must be at least 1, got 0"),
    (dict(xl_cache=False), "needs --xl-cache true"),
    (dict(feedback=True, recurrent_layers="0,1"), "--feedback true needs exactly one recurrent layer"),
])
def test_bad_options_fail_at_build_time_naming_the_flag(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build(**options)


def test_segments_of_one_window_warn_that_the_update_cannot_train(caplog):
    build()
    assert "one window per segment" not in caplog.text
    model = build(segment=W).train()
    assert "one window per segment" in caplog.text
    model(tokens(2, W), start_of_sequence=torch.tensor([True, True]))[0].sum().backward()
    assert recurrent(model).attention.recurrence.update.out_proj.weight.grad is None  # what the warning says


def test_recurrent_layers_count_from_the_top_and_cost_flops():
    model = build(decoder_layers=6, recurrent_layers="-3")
    kinds = [hasattr(layer.attention, "recurrence") for layer in model.decoder.layers]
    assert kinds == [False] * 3 + [True] + [False] * 2
    txl = build_tiny_lm("txl_sliding_window_tiny", L, window_length=W, decoder_layers=6)
    more = build(decoder_layers=6, recurrent_layers="-3", num_states=4 * M)
    assert txl.flops_per_token(L) < model.flops_per_token(L) < more.flops_per_token(L)


# ---- real fairseq processes ------------------------------------------------------------------

SEGMENT = 64  # the tiny arch: W 32 (2 windows per segment), 16 states in layer 0


def train_args(data, save, updates, extra=()):
    return long_document_train_args(data, save, "block_recurrent_tiny", SEGMENT, updates, extra)


@pytest.fixture(scope="module")
def trained(book_data, tmp_path_factory):
    return train_long_document_lm(book_data, tmp_path_factory.mktemp("block_recurrent"), "block_recurrent_tiny",
                                  SEGMENT, updates=12)


def test_fairseq_train_lowers_the_loss_and_saves_the_training_state(trained):
    save, output = trained
    assert_training_lowered_the_loss(output, updates=12, window=3, margin=0.3)
    states = saved_extra_states(save, "attention.state._extra_state")
    assert len(states) == 1 and states[0]["train"][0].shape == (2, 16, 64)


def test_a_resumed_run_equals_an_uninterrupted_one(trained, book_data, tmp_path):
    """The checkpoint holds the training states and XL caches (and fairseq's iterator position):
    6 + 6 updates reproduce the 12 of ``trained`` bit for bit on CPU."""
    save, output = trained
    run_fairseq(train_args(book_data, tmp_path, updates=6))
    second = run_fairseq(train_args(book_data, tmp_path, updates=12))
    whole = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    resumed = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    for name, value in whole.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, resumed[name]), name
    state = lambda model: next(v for k, v in model.items() if k.endswith("attention.state._extra_state"))["train"][0]
    assert torch.equal(state(whole), state(resumed))
    late = lambda out: [r["loss"] for r in json_log_records(out) if int(r["num_updates"]) > 6]
    assert late(output) == late(second.stdout + second.stderr)


def test_whole_books_are_scored_with_the_state_carried(trained, book_data, tmp_path):
    save, _ = trained
    result = score_books(save, book_data, SEGMENT, tmp_path / "books.json", "--batch-size", 2, "--all-lanes", "true")
    assert len(result["books"]) == 3 and result["overall"]["loss_bits"] < math.log2(500)
    # one book at a time or all books on 2 lanes: each lane carries its own state
    assert result["all_lanes"]["loss_bits"] == pytest.approx(result["overall"]["loss_bits"], rel=1e-4)


def test_from_pretrained_samples_text(trained, book_data):
    save, _ = trained
    sample = sample_from_pretrained(save, book_data)
    assert sample.startswith("The captain said") and len(sample.split()) > 20  # > 2 windows: the state updated


def test_two_cpu_processes_each_carry_their_own_lanes(book_data, tmp_path):
    argv = train_args(book_data, tmp_path, updates=3, extra=["--disable-validation"])[1:]
    train_on_two_cpu_processes(argv)
    state = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    recurrent_state = next(v for k, v in state.items() if k.endswith("attention.state._extra_state"))
    assert recurrent_state["train"][0].shape[0] == 2  # rank 0's own 2 lanes, not the 4 global ones


def test_hydra_recipe_trains(book_data, tmp_path):
    proc = run_fairseq(["fairseq-hydra-train", "--config-dir", str(REPO / "hydra_configs" / "block_recurrent"),
                        "--config-name", "block_recurrent_tiny", f"task.data={book_data}",
                        f"common.user_dir={USER_DIR}", f"checkpoint.save_dir={tmp_path}", "common.cpu=true",
                        "optimization.max_update=3", "dataset.batch_size=2", "common.log_interval=1",
                        "lr_scheduler.warmup_updates=1", "dataset.disable_validation=true"])
    assert (tmp_path / "checkpoint_last.pt").exists()
    assert re.search(r"num_updates\W+3\b", proc.stdout + proc.stderr)
