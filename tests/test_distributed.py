"""Data-parallel training on CPU (gloo) through stock fairseq-train matches one process."""
from pathlib import Path

import torch

import subprocess
import sys

from helpers import SHARED_DATA, run_fairseq, set_arg, subprocess_env, tiny_train_args


def sixteen_sentence_data(tiny_data: Path, tmp_path: Path) -> Path:
    """16 one-sentence documents: two updates of 8 per epoch (1 x 8 or 2 processes x 4)."""
    from fairseq_ext.data import prepare

    words = (SHARED_DATA / "wikitext-2" / "wiki.valid.tokens").read_text().split()
    text = "\n\n".join(" ".join(words[i * 40:i * 40 + 12]) for i in range(16)) + "\n"
    (tmp_path / "train.txt").write_text(text)
    out = tmp_path / "bin"
    prepare.main(["--train", str(tmp_path / "train.txt"), "--valid", str(tmp_path / "train.txt"), "--out", str(out),
                  "--spm-model", str(tiny_data / "sentencepiece.bpe.model"), "--workers", "1"])
    return out


def train_args(data, save_dir, batch_size):
    """Plain SGD, no dropout: the only difference between runs is how gradients are summed
    (Adam would blow float noise on near-zero gradients up to a full step).
    --grouped-shuffling keeps the sentences of an update the same for any number of ranks."""
    args = tiny_train_args(data, save_dir, updates=4, extra=[
        "--dropout", "0", "--attention-dropout", "0", "--sample-break-mode", "complete_doc",
        "--required-batch-size-multiple", "1", "--disable-validation", "--grouped-shuffling"])
    for flag, value in [("--batch-size", batch_size), ("--optimizer", "sgd"), ("--lr", 0.5),
                        ("--lr-scheduler", "fixed"), ("--warmup-updates", 0)]:
        args = set_arg(args, flag, value)
    return args


def assert_same_params(a, b):
    for name, value in a.items():
        assert torch.allclose(value, b[name], atol=1e-6, rtol=1e-5), name


def final_params(save_dir: Path):
    state = torch.load(save_dir / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    return state["model"], state["extra_state"]["train_iterator"]


def test_two_gloo_processes_match_one_process(tiny_data, tmp_path):
    data = sixteen_sentence_data(tiny_data, tmp_path)
    run_fairseq(train_args(data, tmp_path / "single", 8))
    launch = [sys.executable, "-m", "fairseq_ext.launch_cpu", "--nprocs", "2", "--"] + train_args(data, tmp_path / "ddp", 4)[1:]
    proc = subprocess.run(launch, capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "training on 2 devices" in proc.stdout + proc.stderr
    single, single_itr = final_params(tmp_path / "single")
    ddp, ddp_itr = final_params(tmp_path / "ddp")
    assert single_itr["epoch"] == ddp_itr["epoch"] == 3  # 4 updates, 2 per epoch
    assert_same_params(single, ddp)
    # the comparison can fail: half the batch in one process gives other parameters
    run_fairseq(train_args(data, tmp_path / "half", 4))
    half, _ = final_params(tmp_path / "half")
    try:
        assert_same_params(single, half)
    except AssertionError:
        return
    raise AssertionError("one process with half the batch ended with the same parameters")


def test_launcher_rejects_flags_it_sets(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fairseq_ext.launch_cpu", "--nprocs", "2", "--", "data", "--cpu",
                           "--ddp-backend", "c10d"], capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode != 0 and "--ddp-backend" in proc.stderr
