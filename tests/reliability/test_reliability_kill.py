"""Whole-plugin check: a fairseq-train process SIGKILLed at random points, many of them inside a
checkpoint save (``--save-interval-updates 1``), always leaves a checkpoint that loads, and the
same command resumes from it. fairseq writes each checkpoint to ``<name>.tmp`` and renames it
(``checkpoint_utils.torch_persistent_save``), so a killed write leaves the previous file whole."""
import random
import signal
import subprocess
import time

import pytest
import torch

from helpers import BIN, subprocess_env, tiny_train_args

pytestmark = pytest.mark.reliability
KILLS = 12


def loads(path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=False)
        return True
    except Exception:
        return False


def test_killed_saves_leave_a_loadable_checkpoint(tiny_data, tmp_path):
    argv = tiny_train_args(tiny_data, tmp_path, "roberta_ext_baseline_small", updates=100_000, extra=[
        "--save-interval-updates", "1", "--keep-interval-updates", "1", "--disable-validation", "--log-interval", "50"])
    cmd = [str(BIN / argv[0])] + [str(a) for a in argv[1:]]
    rng = random.Random(0)
    updates_seen = []
    for kill in range(KILLS):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=subprocess_env())
        deadline = time.time() + 120
        while not list(tmp_path.glob("*.tmp")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.005)  # wait for training to reach its save loop
        time.sleep(rng.uniform(0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
        last = tmp_path / "checkpoint_last.pt"
        assert last.is_file() and loads(last), f"kill {kill}: checkpoint_last.pt does not load"
        updates_seen.append(torch.load(last, map_location="cpu", weights_only=False)["optimizer_history"][-1]["num_updates"])
    assert updates_seen == sorted(updates_seen) and updates_seen[-1] > updates_seen[0], updates_seen  # each run resumed
