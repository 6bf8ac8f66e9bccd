"""Stock fairseq-interactive and fairseq-generate with --task long_document_lm for the three
causal families: the hypotheses have the requested length and every printed token score equals
the model's own score of that token when the hypothesis is streamed through it in windows
(so the incremental cache, state and memory that generation keeps are the streamed ones)."""
import functools
import math
import re

import pytest
import torch

from helpers import USER_DIR, long_document_train_args, run_fairseq

L = 64  # segment; every tiny arch has W 32
LENGTH = 2 * 32 - 1  # generated tokens: with the leading eos the hypothesis is 2 windows
FAMILIES = ("txl_sliding_window_tiny", "memorizing_tiny", "block_recurrent_tiny")


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request, book_data, tmp_path_factory):
    save = tmp_path_factory.mktemp(request.param)
    run_fairseq(long_document_train_args(book_data, save, request.param, L, updates=4))
    return save / "checkpoint_last.pt"


def hypotheses(output: str):
    """{id: (pieces, base-2 token scores)} of the H-/P- lines."""
    pieces = {int(m[1]): m[2].split(" ") for m in re.finditer(r"^H-(\d+)\t\S+\t(.*)$", output, re.M)}
    scores = {int(m[1]): [float(s) for s in m[2].split()] for m in re.finditer(r"^P-(\d+)\t(.*)$", output, re.M)}
    assert pieces and pieces.keys() == scores.keys(), output[-3000:]
    return {i: (pieces[i], scores[i]) for i in pieces}


@functools.lru_cache(maxsize=1)
def load(checkpoint, data):
    """(model in eval mode, task streaming test document 2 on one lane) of a checkpoint."""
    from fairseq import checkpoint_utils

    import fairseq_ext  # noqa: F401  (registers)

    [model], _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(data), "documents": "2", "batch_size": 1,
                                          "batch_size_valid": 1, "tokens_per_sample": L})
    task.load_dataset("test")
    return model.eval(), task


def streamed_scores(checkpoint, data, pieces):
    """Base-2 scores of the pieces and the final eos, the model reading [eos] + pieces as one
    document streamed in windows of W (fresh state)."""
    model, task = load(checkpoint, data)
    d = task.target_dictionary
    ids = torch.tensor([[d.eos()] + [d.index(p) for p in pieces] + [d.eos()]])
    assert d.unk() not in ids[0, 1:-1].tolist() or "<unk>" in pieces
    W = model.decoder.window
    scores = []
    with torch.no_grad():
        for k in range(0, ids.shape[1] - 1, W):
            x, y = ids[:, k:k + W], ids[:, k + 1:k + W + 1]
            logits = model(x, start_of_sequence=torch.tensor([k == 0]))[0]
            scores.append(torch.log_softmax(logits.double(), -1).gather(-1, y[..., None])[0, :, 0])
    return (torch.cat(scores) / math.log(2)).tolist()


def common(checkpoint):
    return ["--path", checkpoint, "--user-dir", USER_DIR, "--task", "long_document_lm", "--cpu",
            "--beam", "1", "--min-len", LENGTH, "--max-len-b", LENGTH, "--seed", "2"]


def test_interactive_samples_prompts_with_the_cache_used_incrementally(checkpoint, book_data):
    prompts = "The captain said\nIt was a dark night\n"
    proc = run_fairseq(["fairseq-interactive", book_data, *common(checkpoint), "--sampling", "--sampling-topk", "10",
                        "--bpe", "sentencepiece", "--sentencepiece-model", book_data / "sentencepiece.bpe.model"],
                       input=prompts)
    hypos = hypotheses(proc.stdout)
    assert sorted(hypos) == [0, 1]
    for pieces, scores in hypos.values():
        assert len(pieces) == LENGTH and len(scores) == LENGTH + 1
        assert scores == pytest.approx(streamed_scores(checkpoint, book_data, pieces), abs=2e-4)
    assert "".join(hypos[0][0]).replace("\u2581", " ").strip().startswith("The captain said")


def test_generate_continues_each_segment_from_its_prefix(checkpoint, book_data):
    prefix = 8
    proc = run_fairseq(["fairseq-generate", book_data, *common(checkpoint), "--gen-subset", "test",
                        "--documents", "2", "--batch-size", "1", "--tokens-per-sample", L,
                        "--prefix-size", prefix])
    hypos = hypotheses(proc.stdout)
    _, task = load(checkpoint, book_data)
    stream, d = task.dataset("test"), task.target_dictionary
    assert sorted(hypos) == list(range(len(stream))) and len(stream) > 1
    for i, (pieces, scores) in hypos.items():
        prompt = stream[i]["target"][0, :prefix].tolist()  # the segment's first tokens ...
        prompt = prompt[:prompt.index(d.eos())] if d.eos() in prompt else prompt  # ... to a paragraph end
        prompt = [t for t in prompt if t != d.pad()]
        assert len(pieces) == LENGTH and [d.index(p) for p in pieces[:len(prompt)]] == prompt
        assert scores == pytest.approx(streamed_scores(checkpoint, book_data, pieces), abs=2e-4)
