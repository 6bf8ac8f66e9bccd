"""Data-parallel training on CPU (gloo) through stock fairseq-train matches one process."""
import subprocess
import sys

from helpers import assert_same_params, final_params, run_fairseq, sixteen_sentence_data, subprocess_env
from helpers import data_parallel_args as train_args


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
