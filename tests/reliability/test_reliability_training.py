"""Matrix columns ``resume``, ``data_parallel`` and ``update_freq``, each through real fairseq-train
processes of every arch at tiny size (no dropout, plain SGD where runs are compared):

* resume: 4 updates in one run = 2 updates, then the same command again to 4, restarting from
  checkpoint_last.pt mid-epoch (``--save-interval-updates 1``): parameters bit for bit and the
  logged losses of updates 3-4 identical.
* data_parallel: 2 gloo processes (``python -m fairseq_ext.launch_cpu``, ``legacy_ddp``) with half
  the batch each = 1 process with the whole batch (masked LMs: 8 sentences; long-document LMs:
  2 lanes, one per process).
* update_freq (masked LMs): ``--update-freq 2`` with half the batch = the whole batch, in 1 process
  over an epoch of one update (with 2 updates per epoch fairseq groups the 4-sentence batches
  otherwise than it shards them over 2 processes, so neither side of that comparison is the
  other's; data_parallel covers 2 processes = 1).
  n/a for long-document LMs: a lane streams its document's segments in order, so two consecutive
  batches of one lane (accumulated) are not two lanes at once (2 processes); not compared.
"""

import pytest
import torch

from helpers import (assert_same_params, data_parallel_args, final_params, json_log_records,
                     long_document_train_args, run_fairseq, set_arg, sixteen_sentence_data, tiny_train_args,
                     train_on_two_cpu_processes)
from reliability.archs import CAUSAL_SEGMENT, as_flags, is_causal, params, tiny_options

ARCHS = params()  # every arch only with -m reliability (subprocess-heavy)
NO_DROPOUT = ["--dropout", "0", "--attention-dropout", "0"]


def tiny(arch):
    return as_flags(tiny_options(arch))


# Stopping mid-epoch used to abort stock fairseq at exit ("terminate called without an active
# exception"); fairseq_ext.data.prefetch_exit stops its prefetching thread first (test_prefetch_exit.py).
MID_EPOCH_STOP = ["--save-interval-updates", "1", "--disable-validation"]


def resume_args(arch, tiny_data, book_data, save_dir, updates):
    if is_causal(arch):
        return long_document_train_args(book_data, save_dir, arch, CAUSAL_SEGMENT, updates,
                                        extra=[*MID_EPOCH_STOP, *tiny(arch)])
    return tiny_train_args(tiny_data, save_dir, arch, updates, extra=[
        *NO_DROPOUT, *MID_EPOCH_STOP, "--log-interval", "1", *tiny(arch)])


def model_state(save_dir):
    return torch.load(save_dir / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]


@pytest.mark.parametrize("arch", ARCHS)
def test_resume(arch, tiny_data, book_data, tmp_path):
    """4 updates = 2 + 2 restarted mid-epoch from checkpoint_last.pt: parameters bit for bit, losses of updates 3-4 identical."""
    whole = run_fairseq(resume_args(arch, tiny_data, book_data, tmp_path / "whole", 4))
    run_fairseq(resume_args(arch, tiny_data, book_data, tmp_path / "resumed", 2))
    second = run_fairseq(resume_args(arch, tiny_data, book_data, tmp_path / "resumed", 4))
    output = second.stdout + second.stderr
    assert "Loaded checkpoint" in output and "@ 2 updates" in output, "the second run did not resume"
    state = torch.load(tmp_path / "resumed" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert state["extra_state"]["train_iterator"]["iterations_in_epoch"] > 0  # mid-epoch
    a, b = model_state(tmp_path / "whole"), state["model"]
    for name, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[name]), name
    late = lambda out: [(r["num_updates"], r["loss"]) for r in json_log_records(out) if int(r["num_updates"]) > 2]
    assert late(whole.stdout + whole.stderr) == late(output) and late(output)


def causal_dp_args(arch, book_data, save_dir, lanes, extra=()):
    argv = long_document_train_args(book_data, save_dir, arch, CAUSAL_SEGMENT, 4,
                                    extra=["--disable-validation", *tiny(arch), *extra])
    for flag, value in [("--batch-size", lanes), ("--optimizer", "sgd"), ("--lr", 0.5)]:
        argv = set_arg(argv, flag, value)
    return argv


def dp_args(arch, data, save_dir, batch, extra=()):
    """(data, book data) -> one fairseq-train command line of ``batch`` sentences / lanes."""
    if is_causal(arch):
        return causal_dp_args(arch, data[1], save_dir, batch, extra)
    return data_parallel_args(data[0], save_dir, batch, arch, extra=[*tiny(arch), *extra])


@pytest.fixture
def dp_data(tiny_data, book_data, tmp_path):
    return sixteen_sentence_data(tiny_data, tmp_path), book_data


def full_batch(arch):
    return 2 if is_causal(arch) else 8


@pytest.mark.parametrize("arch", ARCHS)
def test_data_parallel(arch, dp_data, tmp_path):
    """2 gloo processes (launch_cpu, legacy_ddp) x half the batch = 1 process x the whole batch."""
    run_fairseq(dp_args(arch, dp_data, tmp_path / "one", full_batch(arch)))
    train_on_two_cpu_processes(dp_args(arch, dp_data, tmp_path / "two", full_batch(arch) // 2)[1:], timeout=600)
    one, one_itr = final_params(tmp_path / "one")
    two, two_itr = final_params(tmp_path / "two")
    assert one_itr["epoch"] == two_itr["epoch"] and one_itr["iterations_in_epoch"] == two_itr["iterations_in_epoch"]
    assert_same_params({k: v for k, v in one.items() if isinstance(v, torch.Tensor)}, two)


@pytest.mark.parametrize("arch", [p for p in ARCHS if not is_causal(p.values[0])])
def test_update_freq(arch, tiny_data, tmp_path):
    """8 sentences, one update per epoch: 1 process x 4 sentences with --update-freq 2 = 1 process
    x 8 (each update sums the same 8 sentences whatever order the batches come in)."""
    data = (sixteen_sentence_data(tiny_data, tmp_path, sentences=8), None)
    run_fairseq(dp_args(arch, data, tmp_path / "whole", 8))
    run_fairseq(dp_args(arch, data, tmp_path / "accumulated", 4, extra=["--update-freq", "2"]))
    whole, whole_itr = final_params(tmp_path / "whole")
    accumulated, accumulated_itr = final_params(tmp_path / "accumulated")
    assert whole_itr["epoch"] == accumulated_itr["epoch"] == 5  # 4 updates, 1 per epoch
    assert_same_params(whole, accumulated)
