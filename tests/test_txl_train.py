"""txl_lm through real fairseq processes: fairseq-train over streamed books (loss falls, a resumed
run equals an uninterrupted one), fairseq-hydra-train, per-book fairseq-eval-lm against a
one-book-at-a-time loop, TransformerLanguageModel.from_pretrained(...).sample(), 2 CPU processes."""
from pathlib import Path

import pytest
import torch

from helpers import (REPO, USER_DIR, assert_training_lowered_the_loss, json_log_records, long_document_train_args,
                     run_fairseq, run_python, sample_from_pretrained, saved_extra_states, score_books,
                     train_long_document_lm, train_on_two_cpu_processes)

L = 64  # segment; the tiny arch's window is 32


def txl_args(data, save_dir, updates=12, extra=()):
    return long_document_train_args(data, save_dir, "txl_sliding_window_tiny", L, updates, extra)


@pytest.fixture(scope="module")
def trained(book_data, tmp_path_factory):
    return train_long_document_lm(book_data, tmp_path_factory.mktemp("txl"), "txl_sliding_window_tiny", L,
                                  updates=40)


def test_training_over_streamed_books_lowers_the_loss(trained):
    save, output = trained
    assert_training_lowered_the_loss(output, updates=40, window=5, margin=0.4)
    caches = saved_extra_states(save, "cache._extra_state")
    assert caches and all(cache["train"][0].shape == (2, 4, 32, 16) for cache in caches)


def test_a_resumed_run_equals_an_uninterrupted_one(book_data, tmp_path):
    """The checkpoint holds the training cache and fairseq's iterator position, so 6 + 6 updates
    (restart from checkpoint_last.pt) reproduce 12 updates bit for bit on CPU."""
    whole = run_fairseq(txl_args(book_data, tmp_path / "whole", updates=12))
    run_fairseq(txl_args(book_data, tmp_path / "resumed", updates=6))
    second = run_fairseq(txl_args(book_data, tmp_path / "resumed", updates=12))
    a = torch.load(tmp_path / "whole" / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    for name, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[name]), name
    late = lambda out: [r["loss"] for r in json_log_records(out) if int(r["num_updates"]) > 6]
    assert late(whole.stdout + whole.stderr) == late(second.stdout + second.stderr)


def reference_book_losses(checkpoint: Path, data: Path, split="test"):
    """One book at a time, segment after segment, straight through the model: NLL in bits/token."""
    code = f"""
import json, math, torch, fairseq_ext
from fairseq import checkpoint_utils
from fairseq_ext.data.document_stream import DocumentIndex
from fairseq.data import data_utils
models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([{str(checkpoint)!r}],
    arg_overrides={{"data": {str(data)!r}}})
model = models[0].eval()
d = task.dictionary
tokens = data_utils.load_indexed_dataset({str(data / split)!r}, d)
flat = torch.cat([tokens[i] for i in range(len(tokens))])
index = DocumentIndex.from_sizes(tokens.sizes)
out = []
for first, n in zip(index.first_token.tolist(), index.num_tokens.tolist()):
    stream = torch.cat([torch.tensor([d.eos()]), flat[first:first + n]])
    nll, L = 0.0, {L}
    for s, start in enumerate(range(0, n, L)):
        x = stream[start:start + L]
        y = stream[start + 1:start + L + 1]
        x = torch.cat([x, x.new_full((L - len(x),), d.pad())])
        with torch.no_grad():
            logits = model(x[None], start_of_sequence=torch.tensor([s == 0]))[0][0, :len(y)]
        nll -= torch.log_softmax(logits.double(), -1).gather(1, y[:, None]).sum().item()
    out.append((n, nll / n / math.log(2)))
print(json.dumps(out))
"""
    import json
    return json.loads(run_python(code).stdout.strip().splitlines()[-1])


def test_per_book_eval_lm_equals_a_one_book_at_a_time_loop(trained, book_data, tmp_path):
    save, _ = trained
    result = score_books(save, book_data, L, tmp_path / "books.json", "--batch-size", 2, "--all-lanes", "true")
    reference = reference_book_losses(save / "checkpoint_last.pt", book_data)
    assert [b["tokens"] for b in result["books"]] == [n for n, _ in reference]
    for book, (_, loss) in zip(result["books"], reference):
        assert book["loss_bits"] == pytest.approx(loss, rel=1e-4)
    # all books at once on 2 lanes (a plain fairseq-eval-lm) scores the same tokens the same way
    assert result["all_lanes"]["loss_bits"] == pytest.approx(result["overall"]["loss_bits"], rel=1e-4)
    # --documents picks books: the same figure for book 1 alone, and an overall over it only
    picked = score_books(save, book_data, L, tmp_path / "one_book.json", "--documents", 1)
    assert [b["document"] for b in picked["books"]] == [1] and "all_lanes" not in picked
    assert picked["overall"]["loss_bits"] == pytest.approx(result["books"][1]["loss_bits"], rel=1e-6)
    assert picked["overall"]["tokens"] == result["books"][1]["tokens"]
    stock = run_fairseq(["fairseq-eval-lm", str(book_data), "--path", str(save / "checkpoint_last.pt"),
                         "--user-dir", USER_DIR, "--task", "long_document_lm", "--gen-subset", "test",
                         "--batch-size", "2", "--tokens-per-sample", str(L), "--cpu"])
    assert f"Loss (base 2): {result['all_lanes']['loss_bits']:.4f}" in stock.stdout + stock.stderr


def test_from_pretrained_samples_text_with_the_cache(trained, book_data):
    save, _ = trained
    sample = sample_from_pretrained(save, book_data)
    assert sample.startswith("The captain said") and len(sample.split()) > 20


def test_hydra_recipe_trains(book_data, tmp_path):
    proc = run_fairseq(["fairseq-hydra-train", "--config-dir", str(REPO / "hydra_configs" / "txl"),
                        "--config-name", "txl_sliding_window_tiny", f"task.data={book_data}",
                        f"common.user_dir={USER_DIR}", f"checkpoint.save_dir={tmp_path}", "common.cpu=true",
                        "optimization.max_update=4", "dataset.batch_size=2", "common.log_interval=1",
                        "lr_scheduler.warmup_updates=2", "dataset.validate_interval_updates=2"])
    assert (tmp_path / "checkpoint_last.pt").exists()
    assert "num_updates\": \"4\"" in proc.stdout + proc.stderr or "num_updates 4" in proc.stdout + proc.stderr


def test_two_cpu_processes_each_stream_their_own_lanes(book_data, tmp_path):
    argv = txl_args(book_data, tmp_path, updates=4, extra=["--disable-validation"])[1:]
    train_on_two_cpu_processes(argv)
    state = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert int(state["extra_state"]["train_iterator"]["iterations_in_epoch"]) > 0
    cache = next(v for k, v in state["model"].items() if k.endswith("cache._extra_state"))
    assert cache["train"][0].shape[0] == 2  # rank 0's own 2 lanes, not the 4 global ones


def test_stock_transformer_lm_trains_and_evaluates_on_the_same_stream(book_data, tmp_path):
    """The baseline of the comparisons: a model without state gets the segments without the flag."""
    argv = txl_args(book_data, tmp_path, updates=3, extra=["--disable-validation"])
    argv[argv.index("txl_sliding_window_tiny")] = "transformer_lm"
    argv += ["--decoder-layers", "1", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
             "--decoder-attention-heads", "2", "--share-decoder-input-output-embed"]
    run_fairseq(argv)
    proc = run_fairseq(["fairseq-eval-lm", str(book_data), "--path", str(tmp_path / "checkpoint_last.pt"),
                        "--user-dir", USER_DIR, "--task", "long_document_lm", "--gen-subset", "test",
                        "--batch-size", "2", "--tokens-per-sample", str(L), "--cpu"])
    assert "Perplexity" in proc.stdout + proc.stderr
