"""The benchmark harness at test size on CPU: a two-arch throughput run, a two-run training
comparison that resumes without retraining, FLOPs in fairseq's training logs, and the analytic
FLOPs formula checked against the real modules. No timing is asserted."""
import json

import pytest
import torch.nn as nn
from fairseq import tasks
from fairseq.logging import metrics
from helpers import json_log_records

import fairseq_ext  # noqa: F401  (registers the criterions)
from benchmarks import compare, results, throughput
from fairseq_ext.flops import model_flops_per_token, transformer_flops_per_token

TINY = ["--layers", "2", "--embed-dim", "32", "--ffn-dim", "64", "--heads", "2", "--seq-len", "32",
        "--batch-size", "2", "--vocab-size", "200", "--steps", "2", "--warmup", "1", "--repeats", "2"]
TABLE_COLUMNS = 11


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _table_rows(table: str):
    lines = table.splitlines()
    assert lines[1].startswith("|---")
    return [line.strip("|").split("|") for line in lines[2:]]


def test_throughput_two_archs(tmp_path):
    out = tmp_path / "results"
    result = throughput.main(["--archs", "roberta_base,roberta_ext_baseline_tiny", *TINY,
                              "--name", "tiny", "--results-dir", str(out), "--no-docs"])
    saved = json.loads((out / "tiny.json").read_text())
    assert saved["runs"] == json.loads(json.dumps(result["runs"]))
    stock, ours = saved["runs"]
    assert [stock["arch"], ours["arch"]] == ["roberta_base", "roberta_ext_baseline_tiny"]
    # the shape flags reach every arch: same parameters, same analytic cost
    assert stock["params"] == ours["params"]
    # vocab 200 = 4 specials + 195 symbols + <mask>; masked fraction 0.15
    assert stock["flops_per_token"] == pytest.approx(transformer_flops_per_token(2, 32, 64, 200, 32, 0.15, True))
    for run in saved["runs"]:
        assert len(run["step_times_s"]) == 2 and all(t > 0 for t in run["step_times_s"])
        lo, hi = run["tokens_per_s_range"]
        assert lo <= run["tokens_per_s"] <= hi
        assert run["peak_mem_mb"] > 0 and run["mfu"] is None  # no MFU on CPU
    assert all(v == 1.0 for v in stock["ratio"].values())
    assert ours["ratio"]["tokens_per_s"] == pytest.approx(ours["tokens_per_s"] / stock["tokens_per_s"])
    rows = _table_rows(results.throughput_table(saved))
    assert [len(r) for r in rows] == [TABLE_COLUMNS, TABLE_COLUMNS]
    assert rows[0][0].strip() == "roberta_base" and rows[0][-2].strip() == "1.00×"
    md = results.render(results.load_results(out))
    assert "## Training throughput" in md and saved["command"] in md and results.cpu_model() in md


def _build(argv):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    return cfg, task, task.build_model(cfg.model)


def test_language_model_flops_match_modules(tmp_path):
    """The stock formula's matmul term equals 6 × the weights of the real layers' Linear's."""
    (tmp_path / "dict.txt").write_text("".join(f"w{i} 1\n" for i in range(96)))
    _, task, model = _build([str(tmp_path), "--task", "language_modeling", "--arch", "transformer_lm_gpt",
                             "--decoder-layers", "2", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim",
                             "48", "--decoder-attention-heads", "4", "--tokens-per-sample", "16", "--cpu"])
    linear = sum(m.weight.numel() for m in model.decoder.layers.modules() if isinstance(m, nn.Linear))
    assert linear == 2 * (4 * 32 * 32 + 2 * 32 * 48)
    attention_and_head = 3 * (4 * 2 * 16 * 32 + 2 * 32 * len(task.dictionary))
    assert model_flops_per_token(model, 16) == pytest.approx(6 * linear + attention_and_head)


def test_read_records_resume_drops_stale_and_sums_wall():
    log = "\n".join([
        '2026 | INFO | train_inner | {"num_updates": "2", "loss": "5", "wall": "10", "gflop": "1"}',
        '2026 | INFO | valid | {"valid_loss": "4.5", "valid_num_updates": "2"}',
        '2026 | INFO | train_inner | {"num_updates": "4", "loss": "4", "wall": "20", "gflop": "1"}',
        "=== interrupted after update 4, checkpoint at 2",
        "2026 | INFO | fairseq.trainer | Loaded checkpoint ck/checkpoint_last.pt (epoch 1 @ 2 updates)",
        '[2026][train_inner][INFO] - {"num_updates": "4", "loss": "3.9", "wall": "7", "gflop": "1"}',
        '[2026][valid][INFO] - {"valid_loss": "3.5", "valid_num_updates": "4"}',
    ])
    rec = compare.read_records(log)
    assert [(r["num_updates"], r["loss"], r["wall"]) for r in rec["train_inner"]] == [(2, 5, 10), (4, 3.9, 17)]
    c = compare.curves(rec)
    assert c["updates"] == [2, 4] and c["valid_loss"] == [4.5, 3.5]
    assert c["wall_s"] == [10, 17] and c["flops"] == [2e9, 4e9]


def _spec(tmp_path, **extra):
    common = ["--task", "masked_lm", "--criterion", "masked_lm", "--cpu", "--num-workers", "0",
              "--tokens-per-sample", "32", "--sample-break-mode", "none", "--batch-size", "8",
              "--optimizer", "adam", "--lr", "1e-3", "--log-interval", "1",
              "--validate-interval-updates", "3", "--no-epoch-checkpoints", "--seed", "1"]
    spec = {"name": "two_runs", "common": common, "runs": [
        {"name": "stock", "args": ["--arch", "roberta_base", "--encoder-layers", "2", "--encoder-embed-dim", "64",
                                   "--encoder-ffn-embed-dim", "128", "--encoder-attention-heads", "2"]},
        {"name": "ext", "args": ["--arch", "roberta_ext_baseline_tiny"]}], **extra}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _attempts(run_dir):
    return (run_dir / "train.log").read_text().count("=== compare.py")


def test_compare_two_runs_plots_and_resumes(tiny_data, blimp_sample, tmp_path):
    work, out = tmp_path / "work", tmp_path / "results"
    spec = _spec(tmp_path, blimp={"path": str(blimp_sample), "limit": 2})
    argv = ["--spec", str(spec), "--data", str(tiny_data), "--work-dir", str(work),
            "--results-dir", str(out), "--no-docs"]
    first = compare.main([*argv, "--max-update", "6"])
    saved = json.loads((out / "two_runs.json").read_text())
    assert [r["name"] for r in saved["runs"]] == ["stock", "ext"]
    for run in saved["runs"]:  # BLiMP of checkpoint_last.pt, 2 pairs of each of the 2 paradigms
        assert run["blimp"]["overall"]["pairs"] == 4 and 0 <= run["blimp"]["overall"]["accuracy"] <= 1
        assert sorted(run["blimp"]["fields"]) == ["morphology", "syntax"]
    scored = {r["name"]: (work / r["name"] / "blimp.json").stat().st_mtime for r in saved["runs"]}
    for run in saved["runs"]:
        c = run["curve"]
        assert c["updates"] == [3, 6] and run["updates"] == 6
        assert c["valid_loss"][1] < c["valid_loss"][0]  # a few updates already help
        assert 0 < c["flops"][0] < c["flops"][1] == run["total_flops"]
        # FLOPs come from the masked_lm_flops criterion's records in fairseq's own JSON log
        inner = json_log_records((work / run["name"] / "train.log").read_text())
        assert len(inner) == 6 and all(float(r["gflop"]) > 0 and "tflops" in r for r in inner)
        assert run["total_flops"] == pytest.approx(sum(float(r["gflop"]) * 1e9 for r in inner))
    rows = _table_rows(results.compare_table(saved))
    assert [r[0].strip() for r in rows] == ["stock", "ext"]
    assert "BLiMP % (pairs)" in results.compare_table(saved) and all(r[9].strip().endswith("(4)") for r in rows)
    png = out / "two_runs.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[1] > 3 * matplotlib.image.imread(png).shape[0] / 2

    # finished runs are not retrained, even when the done-marker was lost after fairseq finished
    (work / "ext" / "DONE.json").unlink()
    again = compare.main([*argv, "--max-update", "6"])
    assert _attempts(work / "stock") == 1 and _attempts(work / "ext") == 1
    assert (work / "ext" / "DONE.json").exists()
    assert again["runs"] == first["runs"]
    assert all((work / name / "blimp.json").stat().st_mtime == t for name, t in scored.items())  # not rescored

    # a larger budget continues both runs from fairseq's checkpoint_last.pt (updates 7..8 only)
    more = compare.main([*argv, "--max-update", "8"])
    for run in more["runs"]:
        log = (work / run["name"] / "train.log").read_text()
        assert "Loaded checkpoint" in log and "(epoch 1 @ 6 updates)" in log
        assert run["updates"] == 8 and run["curve"]["updates"][:2] == [3, 6]
        inner = json_log_records((work / run["name"] / "train.log").read_text())
        assert [int(r["num_updates"]) for r in inner] == [1, 2, 3, 4, 5, 6, 7, 8]
        assert (work / run["name"] / "blimp.json").stat().st_mtime > scored[run["name"]]  # new checkpoint: rescored


def test_compare_spec_blimp_errors_name_the_key_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="blimp.path"):
        compare.load_spec(_spec(tmp_path, blimp={"path": str(tmp_path / "nope")}))
    with pytest.raises(ValueError, match="'blimp' must be a mapping with 'path'"):
        compare.load_spec(_spec(tmp_path, blimp="../shared/data/blimp-dev"))


LM = ["--task", "language_modeling", "--arch", "transformer_lm_gpt", "--criterion", "cross_entropy_flops",
      "--decoder-layers", "2", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
      "--decoder-attention-heads", "2"]
MLM = ["--task", "masked_lm", "--arch", "roberta_ext_baseline_tiny", "--criterion", "masked_lm_flops"]


@pytest.mark.parametrize("kind", ["masked_lm_flops", "cross_entropy_flops"])
def test_flops_criterion_logs_batch_flops(tiny_data, kind):
    """The stock loss plus the analytic FLOPs of the batch, summed into ``gflop`` per update."""
    cfg, task, model = _build([str(tiny_data), *(MLM if kind == "masked_lm_flops" else LM),
                               "--tokens-per-sample", "32", "--sample-break-mode", "none", "--cpu"])
    task.load_dataset("valid")
    criterion = task.build_criterion(cfg.criterion)
    batch = task.dataset("valid").collater([task.dataset("valid")[i] for i in range(4)])
    model.train()
    loss, sample_size, log = criterion(model, batch)
    if kind == "masked_lm_flops":  # the plugin model's own cost, its head on the masked share
        expected = model.flops_per_token(32, float(sample_size) / batch["ntokens"]) * batch["ntokens"]
    else:  # the stock formula: 6·weights + attention + output layer
        expected = transformer_flops_per_token(2, 32, 64, len(task.dictionary), 32) * batch["ntokens"]
    assert log["flops"] == pytest.approx(expected) and log["loss"] == pytest.approx(loss.item())
    with metrics.aggregate() as agg:
        type(criterion).reduce_metrics([log, log])
    assert agg.get_smoothed_values()["gflop"] == pytest.approx(2 * expected / 1e9, abs=0.01)
    model.eval()
    assert "flops" not in criterion(model, batch)[2]  # validation is not counted


def _spec_of(arch, tmp_path, precision="fp32", **overrides):
    (tmp_path / "dict.txt").write_text("".join(f"w{i} 1\n" for i in range(50)))
    return {"arch": arch, "task": "masked_lm", "shape": {"layers": 3, "embed_dim": 32, "ffn_dim": None, "heads": None},
            "seq_len": 24, "batch_size": 2, "optimizer": "adam", "device": "cpu", "precision": precision,
            "overrides": overrides}


def test_options_reach_fairseq_spelled_per_arch(tmp_path):
    ns = throughput.parse_fairseq_args(_spec_of("roberta_ext_baseline_tiny", tmp_path, "bf16", alibi="true",
                                                positions="none", embed_layernorm="false"), str(tmp_path))
    assert (ns.encoder_layers, ns.encoder_embed_dim, ns.encoder_ffn_embed_dim) == (3, 32, 128)
    assert (ns.max_positions, ns.tokens_per_sample) == (24, 24)
    assert ns.bf16_autocast is True and ns.alibi is True and ns.embed_layernorm is False
    ns = throughput.parse_fairseq_args(_spec_of("roberta_base", tmp_path, untie_weights_roberta="true"),
                                       str(tmp_path))  # a store_true flag of stock RoBERTa
    assert ns.untie_weights_roberta is True and ns.encoder_layers == 3
    with pytest.raises(ValueError, match="bf16_autocast"):
        throughput.parse_fairseq_args(_spec_of("roberta_base", tmp_path, "bf16"), str(tmp_path))
    with pytest.raises(ValueError, match="'alibi' .* roberta_base"):
        throughput.parse_fairseq_args(_spec_of("roberta_base", tmp_path, alibi="true"), str(tmp_path))


def test_set_option_errors_name_the_flag():
    args = throughput.parse_args(["--archs", "a,b", "--name", "x", "--set", "c:k=1"])
    with pytest.raises(ValueError, match="--set"):
        throughput.arch_overrides(args)
    with pytest.raises(ValueError, match="each arch once"):
        throughput.arch_overrides(throughput.parse_args(["--archs", "a,a", "--name", "x"]))
    args = throughput.parse_args(["--archs", "a,b", "--name", "x", "--set", "b:alibi=true", "--set", "b:k=2"])
    assert throughput.arch_overrides(args) == {"a": {}, "b": {"alibi": "true", "k": "2"}}


# ---- long-document LMs: kNN memory sweep, peers --------------------------------------------

MEMORY_TINY = ["--task", "language_modeling", "--layers", "2", "--embed-dim", "32", "--ffn-dim", "64",
               "--heads", "2", "--seq-len", "32", "--batch-size", "2", "--vocab-size", "100",
               "--steps", "1", "--warmup", "1", "--repeats", "2"]


def test_memory_sweep_fills_the_memory_and_measures_its_share(tmp_path):
    """txl_lm without memory, then memorizing_lm at D 64 and 128 (2 and 4 segments of 32): each
    memory full before timing, its time share measured, its FLOPs share the analytic one; one
    JSON with a plot that RESULTS.md embeds."""
    out = tmp_path / "results"
    result = throughput.main(["--archs", "txl=txl_sliding_window_tiny,memorizing_tiny", *MEMORY_TINY,
                              "--sweep", "memorizing_tiny:memory_size=64,128", "--set", "memorizing_tiny:memory_layers=0",
                              "--name", "sweep", "--results-dir", str(out), "--no-docs"])
    saved = json.loads((out / "sweep.json").read_text())
    txl, small, large = saved["runs"]
    assert [r["label"] for r in saved["runs"]] == ["txl", "memorizing_tiny@memory_size=64", "memorizing_tiny@memory_size=128"]
    assert "memory" not in txl and small["swept"] == {"of": "memorizing_tiny", "key": "memory_size", "value": "64"}
    d_h, k = 16, 32  # the tiny preset's head width; k = memory_neighbors
    for run, D in ((small, 64), (large, 128)):
        m = run["memory"]
        assert m["fill"] == {"method": "segments", "segments": D // 32, "memory_size": D, "entries_per_lane_head": D}
        assert 0 < m["time_share_forward"] < 1
        memory_flops = 2 * D * 2 * d_h + 3 * 4 * k * 2 * d_h  # search (forward only) + external attention
        assert m["flops_share"] == pytest.approx(memory_flops / run["flops_per_token"])
        assert run["flops_per_token"] - txl["flops_per_token"] == pytest.approx(memory_flops)
    assert result["plots"] == [str(out / "sweep.png")]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _table_rows(results.memory_table(saved))
    assert [r[0].strip() for r in rows] == ["txl: txl_sliding_window_tiny", "memorizing_tiny@memory_size=64 (memory_layers=0)",
                                            "memorizing_tiny@memory_size=128 (memory_layers=0)"]
    assert rows[1][2].strip() == "2 segments, 64 entries" and rows[0][6].strip() == "–"
    md = results.render(results.load_results(out))
    assert results.memory_table(saved) in md and "sweep.png)" in md


def test_direct_memory_fill_writes_every_slot():
    """--memory-fill direct: one segment starts the documents, then every slot holds a unit key."""
    import torch
    from helpers import build_tiny_lm

    model = build_tiny_lm("memorizing_tiny", 32, memory_size=128)
    net_input = {"src_tokens": torch.randint(4, 40, (2, 32)), "start_of_sequence": torch.ones(2, dtype=torch.bool)}
    fill = throughput.fill_memory(model, net_input, {"memory_fill": "direct", "seq_len": 32})
    assert fill == {"method": "direct", "segments": 1, "memory_size": 128, "entries_per_lane_head": 128}
    keys, values, count = model.decoder.layers[-1].attention.memory.get(True)
    assert keys.shape == (2, 4, 128, 16) and count.tolist() == [128, 128] and not net_input["start_of_sequence"].any()
    torch.testing.assert_close(keys.norm(dim=-1), torch.ones(2, 4, 128))
    model(**net_input)  # the lanes continue their documents with the full memory
    assert model.decoder.layers[-1].attention.memory.get(True)[2].tolist() == [160, 160]


class _FakeIndex:
    ntotal = 0


class _FakeKnnMemory:
    """memorizing-transformers-pytorch's KNNMemory as seen by the adapter: one faiss index per
    lane that empties itself once more than D entries were added."""

    def __init__(self, lanes, size):
        self.size, self.knns = size, [type("Knn", (), {"index": _FakeIndex()})() for _ in range(lanes)]

    def add(self, memories):
        for knn in self.knns:
            n = knn.index.ntotal + memories.shape[1]
            knn.index.ntotal = n if n <= self.size else memories.shape[1]

    def search(self, queries, k):
        return queries.new_zeros(*queries.shape[:-1], k)


class _FakeMemorizingTransformer(nn.Module):
    """The peer's model API (kwargs, create_knn_memories, forward -> (loss, xl memories)): the
    previous segment's keys go to the kNN memory, so the first call adds nothing."""

    built = {}

    def __init__(self, **kwargs):
        super().__init__()
        _FakeMemorizingTransformer.built = kwargs
        self.embed = nn.Embedding(kwargs["num_tokens"], kwargs["dim"])
        self.out = nn.Linear(kwargs["dim"], kwargs["num_tokens"])

    def create_knn_memories(self, batch_size):
        return [_FakeKnnMemory(batch_size, self.built["max_knn_memories"])]

    def forward(self, x, knn_memories, xl_memories=None, labels=None):
        import torch.nn.functional as F

        h = self.embed(x)
        knn_memories[0].search(h, self.built["num_retrieved_memories"])
        if xl_memories is not None:
            knn_memories[0].add(xl_memories)
        return F.cross_entropy(self.out(h).transpose(1, 2), labels), h.detach()


def _peer_spec(arch, tmp_path, **overrides):
    return {"arch": arch, "label": arch, "shape": {"layers": 4, "embed_dim": 16, "ffn_dim": 32, "heads": 2},
            "seq_len": 8, "batch_size": 2, "vocab_size": 50, "precision": "fp32", "device": "cpu",
            "steps": 2, "warmup": 1, "repeats": 2, "overrides": overrides, "tmp": str(tmp_path)}


def test_peer_adapter_maps_our_options_fills_the_memory_and_reports_our_figures(tmp_path):
    """benchmarks.peers on a stand-in for the peer library (the real one lives in .venv-peers)."""
    import io
    import types

    from benchmarks import peers

    lib = types.SimpleNamespace(MemorizingTransformer=_FakeMemorizingTransformer)
    channel = io.StringIO()
    spec = _peer_spec("peer.memorizing_transformers", tmp_path, memory_size="128", memory_layers="-2",
                      attention_head_dim="8")
    run = peers.run_peer(spec, channel, lib=lib, go=lambda: True)
    built = _FakeMemorizingTransformer.built
    assert (built["depth"], built["dim"], built["heads"], built["dim_head"], built["ff_mult"]) == (4, 16, 2, 8, 2)
    assert built["memorizing_layers"] == (3,) and built["max_knn_memories"] == 128  # layer -2 of 4, 1-based
    assert built["num_retrieved_memories"] == 32 and built["xl_max_memories"] == 8
    assert channel.getvalue().split() == ["ready", "done", "done"]
    # 1 warm-up + 2 x 2 timed + 2 profiled updates add 7 x 8 entries: filled with 128/8 - 7 + 1 segments
    # (the first adds nothing), the memory runs from 64 entries to 120, never emptying itself
    assert run["memory"]["fill"] == {"method": "segments", "segments": 10, "memory_size": 128, "entries_per_lane": 72}
    assert run["memory"]["entries_per_lane_timed"] == [72, 112]
    assert 0 < run["memory"]["time_share_forward"] < 1 and run["memory"]["flops_share"] is None
    assert set(run) >= {"arch", "label", "precision", "overrides", "params", "flops_per_token", "step_times_s",
                        "peak_mem_mb", "memory_measure", "peer"}
    assert len(run["step_times_s"]) == 2 and run["params"] == sum(p.numel() for p in lib.MemorizingTransformer(
        num_tokens=50, dim=16, max_knn_memories=1).parameters())
    summarized = throughput.summarize(run, spec, None)
    assert summarized["tokens_per_s"] > 0 and "kNN memory of 128 entries" in run["peer"]["note"]
    with pytest.raises(ValueError, match="peer.memorizing_transformers:memory_neighbours"):
        peers.peer_options("memorizing_transformers", {"memory_neighbours": "4"})
    with pytest.raises(ValueError, match="memory_layers 4 is out of range for --layers 4"):
        peers.run_peer({**spec, "overrides": {"memory_layers": "4"}}, channel, lib=lib, go=lambda: True)


class _FakeBlockRecurrentTransformer(_FakeMemorizingTransformer):
    """block-recurrent-transformer-pytorch's API: (tokens + 1 to shift, xl memories, states) in,
    (loss, xl memories, states) out."""

    calls = []

    def forward(self, x, return_loss=False, xl_memories=(), states=()):
        import torch.nn.functional as F

        _FakeBlockRecurrentTransformer.calls.append((x.shape[1], len(xl_memories), len(states)))
        h = self.embed(x[:, :-1])
        return F.cross_entropy(self.out(h).transpose(1, 2), x[:, 1:]), [h.detach()], [h.detach()]


def test_block_recurrent_peer_adapter_carries_memories_and_states(tmp_path):
    import io
    import types

    from benchmarks import peers

    lib = types.SimpleNamespace(BlockRecurrentTransformer=_FakeBlockRecurrentTransformer)
    spec = _peer_spec("peer.block_recurrent", tmp_path, window_length="4", num_states="6")
    run = peers.run_peer(spec, io.StringIO(), lib=lib, go=lambda: True)
    built = _FakeBlockRecurrentTransformer.built
    assert (built["block_width"], built["num_state_vectors"], built["max_seq_len"]) == (4, 6, 8)
    assert built["recurrent_layers"] == (2,) and built["use_flash_attn"] is True  # layer -3 of 4, 1-based
    assert _FakeBlockRecurrentTransformer.calls == [(9, 0, 0)] + [(9, 1, 1)] * 4  # 1 warm-up + 2 x 2 timed
    assert "memory" not in run and len(run["step_times_s"]) == 2
    with pytest.raises(ValueError, match="--seq-len 8 must be a multiple of window_length 3"):
        peers.run_peer({**spec, "overrides": {"window_length": "3"}}, io.StringIO(), lib=lib, go=lambda: True)


def test_a_peer_arch_needs_the_peer_interpreter(tmp_path):
    with pytest.raises(SystemExit, match="setup_peers.sh"):
        throughput.main(["--archs", "peer.block_recurrent", *MEMORY_TINY, "--peer-python", str(tmp_path / "none"),
                         "--name", "x", "--results-dir", str(tmp_path), "--no-docs"])


def test_clocked_seconds_counts_only_the_calls_asked_for_and_restores_the_methods():
    """The memory-path share (ours and the peers') comes from ``clocked_seconds``: a subclass's
    call of its parent's method is counted once, for the subclass, and every method (own or
    inherited) is back as it was afterwards."""
    class Parent:
        def work(self):
            return "parent"

    class Child(Parent):
        def work(self):
            return super().work() + "+child"

    class Other(Parent):
        pass

    calls = []
    own_work, parent_work = Child.__dict__["work"], Parent.__dict__["work"]

    def step():
        calls.append((Child().work(), Other().work()))

    spent, total = throughput.clocked_seconds([(Child, "work"), (Parent, "work"), (Other, "work")], step, 3,
                                              sync=lambda: None, instances_of=Child)
    assert calls == [("parent+child", "parent")] * 3
    assert 0 < spent[1] <= spent[0] <= total and spent[2] == 0.0  # Other is not a Child
    assert Child.__dict__["work"] is own_work and Parent.__dict__["work"] is parent_work
    assert "work" not in Other.__dict__
