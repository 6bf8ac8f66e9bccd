"""long_document_lm: whole documents streamed per batch lane (start flags, list scheduling,
data-parallel lanes, epoch reshuffle, --documents, stock eval-lm scoring, errors)."""
import math
import re
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from fairseq import options, tasks
from fairseq.data import Dictionary, indexed_dataset
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from fairseq_ext.data.document_stream import IDLE
from fairseq_ext.tasks.long_document_lm import LongDocumentLMTask

L = 8  # --tokens-per-sample
# Paragraph content lengths per document (each paragraph also ends with eos); [] = empty document.
# Tokens per document: 3 (< one segment), 8 (exactly one), 9, 20, -, 33, 17, 48, 12, 26, 5, 41.
TRAIN_DOCS = [[2], [3, 3], [8], [4, 6, 7], [], [10, 10, 10], [16], [5] * 8, [11], [25], [4], [9, 9, 9, 11]]
VALID_DOCS = [[6, 6], [2], [30], [], [7], [12, 3]]


def write_split(root: Path, split: str, documents: List[List[List[int]]], d: Dictionary) -> None:
    """fairseq binaries as prepare writes them: a line per paragraph, an empty line between documents."""
    builder = indexed_dataset.make_builder(str(root / f"{split}.bin"), impl="mmap", vocab_size=len(d))
    for i, paragraphs in enumerate(documents):
        if i:
            builder.add_item(torch.IntTensor([d.eos()]))
        for paragraph in paragraphs:
            builder.add_item(torch.IntTensor(paragraph + [d.eos()]))
    builder.finalize(str(root / f"{split}.idx"))


def random_documents(shapes, d: Dictionary, rng) -> List[List[List[int]]]:
    return [[[int(t) for t in rng.integers(d.nspecial, len(d), n)] for n in doc] for doc in shapes]


def flat(paragraphs, eos) -> List[int]:
    return [t for p in paragraphs for t in p + [eos]]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Dict:
    root = tmp_path_factory.mktemp("long-docs")
    d = Dictionary()
    for i in range(60):
        d.add_symbol(f"w{i}")
    d.save(str(root / "dict.txt"))
    rng = np.random.default_rng(0)
    docs = {"train": random_documents(TRAIN_DOCS, d, rng), "valid": random_documents(VALID_DOCS, d, rng)}
    for split, documents in docs.items():
        write_split(root, split, documents, d)
    write_split(root, "nothing", [], d)  # no item at all
    write_split(root, "blank", [[], [], []], d)  # only empty lines
    tokens = {s: [flat(doc, d.eos()) for doc in documents if doc] for s, documents in docs.items()}
    return {"root": root, "tokens": tokens, "eos": d.eos(), "pad": d.pad()}


def make_task(data, *flags, lanes=3) -> LongDocumentLMTask:
    """The task exactly as fairseq-train configures it (argparse -> omegaconf -> setup_task)."""
    argv = [str(data["root"]), "--task", "long_document_lm", "--arch", "transformer_lm",
            "--tokens-per-sample", str(L), "--batch-size", str(lanes), "--seed", "1", *flags]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    return tasks.setup_task(cfg.task)


def epoch_batches(task, split, epoch=1) -> List[Dict]:
    if split not in task.datasets:
        task.load_dataset(split)
    dataset = task.dataset(split)
    return list(task.get_batch_iterator(dataset, epoch=epoch, max_sentences=dataset.lanes_per_rank)
                .next_epoch_itr(shuffle=True))


def lane_streams(batches, pad) -> List[Dict]:
    """Documents as the lanes stream them, cut only at start flags, checking the layout."""
    streams, current = [], {}
    for step, batch in enumerate(batches):
        src, target = batch["net_input"]["src_tokens"], batch["target"]
        lengths, start = batch["net_input"]["src_lengths"], batch["net_input"]["start_of_sequence"]
        assert src.shape == target.shape == (len(lengths), L) and start.dtype == torch.bool
        assert batch["ntokens"] == int(target.ne(pad).sum()) == int(lengths.sum())
        for lane in range(len(lengths)):
            n = int(lengths[lane])
            assert target[lane, :n].ne(pad).all() and target[lane, n:].eq(pad).all() and src[lane, n:].eq(pad).all()
            if start[lane]:
                current[lane] = dict(lane=lane, step=step, id=int(batch["id"][lane]), inputs=[], targets=[])
                streams.append(current[lane])
            else:  # a continuation follows a full segment of the same lane
                assert current[lane]["last_length"] == L, f"lane {lane} continues after a short segment"
            current[lane]["inputs"] += src[lane, :n].tolist()
            current[lane]["targets"] += target[lane, :n].tolist()
            current[lane]["last_length"] = n
            current[lane]["end"] = step
    return [s for s in streams if s["targets"]]  # drop idle (all-pad) lanes


def starts(batches, task, split):
    """(step, lane, document) of every document start, the order documents were taken in."""
    dataset = task.dataset(split)
    return [(s["step"], s["lane"], dataset.document_of(s["id"])) for s in lane_streams(batches, dataset.pad)]


@pytest.mark.parametrize("split,lanes", [("train", 3), ("train", 1), ("valid", 2), ("valid", 7)])
def test_every_document_token_is_a_target_once_in_order_in_one_lane(data, split, lanes):
    task = make_task(data, lanes=lanes) if split == "train" else make_task(data, "--batch-size-valid", str(lanes))
    streams = lane_streams(epoch_batches(task, split), data["pad"])
    # each stream is one lane's consecutive segments between start flags: the documents, whole
    assert sorted(s["targets"] for s in streams) == sorted(data["tokens"][split])
    for s in streams:
        assert s["inputs"] == [data["eos"]] + s["targets"][:-1]  # input = [eos] + doc, target = doc
    # list scheduling: every lane ends within one document's segments of the longest lane
    segments = [math.ceil(len(doc) / L) for doc in data["tokens"][split]]
    lane_ends = [max(s["end"] for s in streams if s["lane"] == lane) for lane in {s["lane"] for s in streams}]
    assert max(lane_ends) - min(lane_ends) <= max(segments)
    # the lane that frees first takes the next document: no lane idles before the last one starts
    batches = epoch_batches(task, split)
    last_start = max(s["step"] for s in streams)
    assert all(b["net_input"]["src_lengths"][:len(segments)].gt(0).all() for b in batches[:last_start])
    assert len(batches) == max(lane_ends) + 1


def test_lanes_without_documents_get_all_pad_segments_flagged_as_starts(data):
    task = make_task(data, "--batch-size-valid", "7")  # 5 valid documents on 7 lanes
    batches = epoch_batches(task, "valid")
    for batch in batches:
        assert batch["target"][5:].eq(data["pad"]).all() and batch["net_input"]["start_of_sequence"][5:].all()
        assert batch["net_input"]["src_lengths"][5:].eq(0).all()
    assert task.dataset("valid").lane_documents(0).tolist() == [0, 1, 2, 3, 4, IDLE, IDLE]


def test_metadata_names_each_lanes_document_and_token_counts(data):
    task = make_task(data)
    batches = epoch_batches(task, "train")
    dataset = task.dataset("train")
    assert task.document_token_counts("train").tolist() == [len(t) for t in data["tokens"]["train"]]
    ids = torch.cat([b["id"] for b in batches])
    assert len(set(ids.tolist())) == len(ids)
    for s in lane_streams(batches, data["pad"]):
        doc = dataset.document_of(s["id"])
        assert s["targets"] == data["tokens"]["train"][doc]
        for step in range(s["step"], s["end"] + 1):
            assert dataset.lane_documents(step)[s["lane"]] == doc
            assert dataset.document_of(batches[step]["id"][s["lane"]]) == doc


def test_two_ranks_hold_disjoint_documents_and_the_global_lanes(data):
    whole = epoch_batches(make_task(data, lanes=4), "train")
    ranks = [make_task(data, "--data-parallel-rank", str(r), "--data-parallel-size", "2", lanes=2) for r in range(2)]
    per_rank = [epoch_batches(task, "train") for task in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(whole)
    held = [{doc for _, _, doc in starts(batches, task, "train")} for batches, task in zip(per_rank, ranks)]
    assert not held[0] & held[1] and held[0] | held[1] == set(range(len(data["tokens"]["train"])))
    for r, batches in enumerate(per_rank):  # rank r's lanes are lanes [2r, 2r+2) of the global schedule
        for mine, glob in zip(batches, whole):
            assert torch.equal(mine["net_input"]["src_tokens"], glob["net_input"]["src_tokens"][2 * r:2 * r + 2])
            assert torch.equal(mine["id"], glob["id"][2 * r:2 * r + 2])
    # fairseq's trainer asks for num_shards = world size: the dataset is not sharded again
    dataset = ranks[1].dataset("train")
    assert len(list(ranks[1].get_batch_iterator(dataset, num_shards=2, shard_id=1).next_epoch_itr())) == len(whole)
    with pytest.raises(ValueError, match="--num-shards 3"):
        ranks[1].get_batch_iterator(dataset, num_shards=3, shard_id=1)


def test_epochs_reshuffle_documents_reproducibly(data):
    task = make_task(data)
    first, second = starts(epoch_batches(task, "train", 1), task, "train"), starts(epoch_batches(task, "train", 2), task, "train")
    assert [doc for *_, doc in first] != [doc for *_, doc in second]
    again = make_task(data)
    assert starts(epoch_batches(again, "train", 2), again, "train") == second
    other_seed = make_task(data, "--seed", "2")
    assert starts(epoch_batches(other_seed, "train", 1), other_seed, "train") != first
    # one iterator moved on to its next epoch rebuilds the schedule and its length
    itr = task.get_batch_iterator(task.dataset("train"), epoch=1)
    assert len(list(itr.next_epoch_itr())) == len(itr)
    moved = list(itr.next_epoch_itr())
    assert itr.epoch == 2 and len(moved) == len(itr) == len(epoch_batches(task, "train", 2))
    assert all(torch.equal(a["target"], b["target"]) for a, b in zip(moved, epoch_batches(task, "train", 2)))


def test_validation_order_is_fixed_and_deterministic(data):
    task = make_task(data, "--batch-size-valid", "2")
    taken = starts(epoch_batches(task, "valid", 1), task, "valid")
    assert [doc for *_, doc in sorted(taken)] == list(range(5))  # lanes take documents in file order
    assert starts(epoch_batches(task, "valid", 3), task, "valid") == taken
    other_seed = make_task(data, "--batch-size-valid", "2", "--seed", "9")
    assert starts(epoch_batches(other_seed, "valid"), other_seed, "valid") == taken


def test_documents_option_streams_the_listed_documents(data):
    task = make_task(data, "--documents", "4,1", "--batch-size-valid", "1")
    streams = lane_streams(epoch_batches(task, "valid"), data["pad"])
    assert [s["targets"] for s in streams] == [data["tokens"]["valid"][4], data["tokens"]["valid"][1]]
    assert task.document_token_counts("valid").tolist() == [len(t) for t in data["tokens"]["valid"]]


@pytest.mark.parametrize("documents,message", [("5", r"index 5 is out of range: split valid .* has 5 documents"),
                                               ("-1", "index -1 is out of range"), ("1,x", "expected comma-separated"),
                                               ("2,2", "listed twice")])
def test_bad_documents_are_refused(data, documents, message):
    with pytest.raises(ValueError, match=f"--documents.*{message}"):
        make_task(data, "--documents", documents).load_dataset("valid")


def test_bad_splits_and_lane_counts_are_refused(data):
    task = make_task(data)
    for split in ("nothing", "blank"):
        with pytest.raises(ValueError, match=f"split {split} .*{split}.bin.* holds no documents"):
            task.load_dataset(split)
    with pytest.raises(FileNotFoundError, match="split missing not found .*missing.bin"):
        task.load_dataset("missing")
    with pytest.raises(ValueError, match="--batch-size 12 .* 12 lanes, but split train .* only 11 documents"):
        make_task(data, lanes=12).load_dataset("train")
    with pytest.raises(ValueError, match="--batch-size 6 x 2 data-parallel processes = 12 lanes"):
        make_task(data, "--data-parallel-rank", "0", "--data-parallel-size", "2", lanes=6).load_dataset("train")
    with pytest.raises(ValueError, match="--data-parallel-rank 2 / --data-parallel-size 2"):
        make_task(data, "--data-parallel-rank", "2", "--data-parallel-size", "2").load_dataset("train")
    task.load_dataset("valid")
    with pytest.raises(ValueError, match="loaded with 3 lanes .* but 4 were asked"):
        task.get_batch_iterator(task.dataset("valid"), max_sentences=4)


@pytest.mark.parametrize("flags", [["--add-bos-token"], ["--sample-break-mode", "complete"]])
def test_options_that_do_not_apply_are_refused(data, flags):
    with pytest.raises(ValueError, match=f"{flags[0]}.*does not apply"):
        make_task(data, *flags)


class LogProbOfTokenId(torch.nn.Module):
    """A stand-in LM for stock eval_lm: log p(token) = -(token + 1) / 100 whatever the context."""

    def __init__(self, vocab_size):
        super().__init__()
        self.table = torch.nn.Parameter(-(torch.arange(vocab_size, dtype=torch.float) + 1) / 100)

    def forward(self, src_tokens, src_lengths, start_of_sequence):
        return (self.table.expand(*src_tokens.shape, -1),)  # (B, L, V)

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return net_output[0]


@pytest.mark.parametrize("documents", ["", "2"])
def test_stock_eval_lm_scores_every_document_token_once(data, documents):
    from fairseq_cli.eval_lm import eval_lm

    task = make_task(data, "--documents", documents, "--batch-size-valid", "2")
    task.load_dataset("valid")
    itr = task.eval_lm_dataloader(task.dataset("valid"), batch_size=2, num_workers=0)
    result = eval_lm([LogProbOfTokenId(len(task.dictionary))], task.source_dictionary, itr)
    scored = [t for i, doc in enumerate(data["tokens"]["valid"]) if documents in ("", str(i)) for t in doc]
    assert result["loss"] == pytest.approx(np.mean([(t + 1) / 100 for t in scored]) / math.log(2))
    with pytest.raises(ValueError, match="--context-window does not apply"):
        task.eval_lm_dataloader(task.dataset("valid"), batch_size=2, context_window=4)


def test_fairseq_trainer_iterates_two_epochs_and_validation(data):
    """fairseq's own Trainer.get_train_iterator / get_valid_iterator, as fairseq-train calls them
    (a DataLoader worker process each epoch), with a model that carries state (so batches have
    start_of_sequence); no training step."""
    from fairseq.trainer import Trainer

    argv = [str(data["root"]), "--task", "long_document_lm", "--arch", "txl_sliding_window_tiny", "--cpu",
            "--window-length", str(L), "--tokens-per-sample", str(L), "--batch-size", "3",
            "--batch-size-valid", "2", "--num-workers", "1", "--optimizer", "adam", "--lr", "1e-3"]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    trainer = Trainer(cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion))
    task.load_dataset("valid", combine=False, epoch=1)
    orders = []
    epoch_itr = trainer.get_train_iterator(epoch=1)
    for epoch in (1, 2):
        batches = list(epoch_itr.next_epoch_itr(shuffle=True))
        assert epoch_itr.epoch == epoch and len(batches) == len(epoch_itr) > 0
        streams = lane_streams(batches, data["pad"])
        assert sorted(s["targets"] for s in streams) == sorted(data["tokens"]["train"])
        orders.append([s["targets"] for s in sorted(streams, key=lambda s: (s["step"], s["lane"]))])
        epoch_itr = trainer.get_train_iterator(epoch_itr.next_epoch_idx, load_dataset=False)
    assert orders[0] != orders[1]
    valid = list(trainer.get_valid_iterator("valid").next_epoch_itr(shuffle=False, set_dataset_epoch=False))
    assert sorted(s["targets"] for s in lane_streams(valid, data["pad"])) == sorted(data["tokens"]["valid"])


STATELESS_LM = """
import fairseq_ext  # noqa: F401  (registers long_document_lm)
from fairseq.models import register_model
from fairseq.models.transformer_lm import TransformerLanguageModel, TransformerLanguageModelConfig


@register_model("stateless_lm_for_tests", dataclass=TransformerLanguageModelConfig)
class StatelessLM(TransformerLanguageModel):
    # stock transformer_lm, taking (and ignoring) the task's start_of_sequence
    def forward(self, src_tokens, src_lengths=None, start_of_sequence=None):
        return self.decoder(src_tokens)
"""


@pytest.fixture(scope="module")
def test_user_dir(tmp_path_factory) -> str:
    """A --user-dir with a stock LM that accepts the batch (fairseq_ext's own models come later)."""
    root = tmp_path_factory.mktemp("user-dir") / "long_document_test_models"
    root.mkdir()
    (root / "__init__.py").write_text(STATELESS_LM)
    return str(root)


def train_args(data, user_dir, save, *extra) -> List[str]:
    return [str(data["root"]), "--user-dir", user_dir, "--task", "long_document_lm", "--arch",
            "stateless_lm_for_tests", "--decoder-layers", "1", "--decoder-embed-dim", "16",
            "--decoder-ffn-embed-dim", "16", "--decoder-attention-heads", "2", "--dropout", "0",
            "--tokens-per-sample", str(L), "--cpu", "--disable-validation", "--num-workers", "0",
            "--save-dir", str(save), "--no-epoch-checkpoints", "--log-format", "json", *extra]


TRAIN_THEN_EVAL = """
import sys
from fairseq.models.transformer_lm import TransformerLanguageModel
from fairseq_cli import eval_lm, train

sys.argv = ["fairseq-train", *{train!r}]
train.cli_main()
for documents in ("", "2"):
    sys.argv = ["fairseq-eval-lm", {data!r}, "--user-dir", {user_dir!r}, "--path", {save!r} + "/checkpoint_last.pt",
                "--task", "long_document_lm", "--batch-size", "2", "--tokens-per-sample", "8",
                "--gen-subset", "valid", "--documents", documents, "--cpu", "--num-workers", "0"]
    eval_lm.cli_main()
# hub generation batches language_modeling's inference dataset through the task's iterator
lm = TransformerLanguageModel.from_pretrained({save!r}, "checkpoint_last.pt", {data!r})
print("SAMPLE", repr(lm.sample("w5 w6", beam=1, max_len_b=8, min_len=5)))
"""


def test_fairseq_train_and_stock_eval_lm_run_with_the_task(data, test_user_dir, tmp_path):
    """Real fairseq-train / fairseq-eval-lm mains (in one process, to start Python once):
    training crosses epochs, eval-lm loads the checkpoint and scores each document token once,
    hub ``sample`` (language_modeling's inference dataset) still generates."""
    from helpers import run_python

    train = train_args(data, test_user_dir, tmp_path, "--batch-size", "3", "--optimizer", "adam",
                       "--lr", "1e-3", "--max-update", "16")
    proc = run_python(TRAIN_THEN_EVAL.format(train=train, data=str(data["root"]), user_dir=test_user_dir,
                                             save=str(tmp_path)))
    output = proc.stdout + proc.stderr
    assert "begin training epoch 2" in output and (tmp_path / "checkpoint_last.pt").is_file()
    evaluated = [int(n.replace(",", "")) for n in re.findall(r"Evaluated ([\d,]+) tokens", output)]
    assert evaluated == [sum(map(len, data["tokens"]["valid"])), len(data["tokens"]["valid"][2])]
    assert re.search(r"SAMPLE 'w5 w6( w\d+)+'", output)


def test_two_gloo_processes_train_like_one_process_with_all_lanes(data, test_user_dir, tmp_path):
    """2 ranks x 2 lanes (ranks from torch.distributed) give the parameters of 1 process x 4
    lanes: each rank streamed exactly its half of the global lanes."""
    import subprocess
    import sys

    from helpers import run_fairseq, subprocess_env

    sgd = ["--optimizer", "sgd", "--lr", "0.5", "--lr-scheduler", "fixed", "--max-update", "3"]
    run_fairseq(["fairseq-train", *train_args(data, test_user_dir, tmp_path / "one", "--batch-size", "4", *sgd)])
    launch = [sys.executable, "-m", "fairseq_ext.launch_cpu", "--nprocs", "2", "--",
              *train_args(data, test_user_dir, tmp_path / "two", "--batch-size", "2", *sgd)]
    proc = subprocess.run(launch, capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "training on 2 devices" in proc.stdout + proc.stderr
    one, two = (torch.load(tmp_path / run / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
                for run in ("one", "two"))
    for name, value in one.items():
        assert torch.allclose(value, two[name], atol=1e-6, rtol=1e-5), name
