"""Whole-plugin check: a fairseq-train process SIGKILLed at random points, many of them inside a
checkpoint save (``--save-interval-updates 1``), always leaves a whole checkpoint, no older than
the one before the kill, and the same command resumes from it. fairseq writes each checkpoint to
``<name>.tmp`` and renames it (``checkpoint_utils.torch_persistent_save``), so a killed write
leaves the previous file whole; but it then copies that file to checkpoint_last.pt with a plain
copy, and a kill inside the copy truncates checkpoint_last.pt: ``fairseq_ext.checkpoints.repair``
puts the newest whole checkpoint back in its place."""
import random
import signal
import subprocess
import time

import pytest

from fairseq_ext.checkpoints import loads, newest_loadable, repair, updates_of
from helpers import BIN, subprocess_env, tiny_train_args

pytestmark = pytest.mark.reliability
KILLS = 12


def test_killed_saves_leave_a_loadable_checkpoint(tiny_data, tmp_path):
    argv = tiny_train_args(tiny_data, tmp_path, "roberta_ext_baseline_small", updates=100_000, extra=[
        "--save-interval-updates", "1", "--keep-interval-updates", "1", "--disable-validation", "--log-interval", "50"])
    cmd = [str(BIN / argv[0])] + [str(a) for a in argv[1:]]
    rng = random.Random(0)
    updates_seen, repaired = [], []
    for kill in range(KILLS):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=subprocess_env())
        deadline = time.time() + 120
        while not list(tmp_path.glob("*.tmp")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.005)  # wait for training to reach its save loop
        time.sleep(rng.uniform(0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
        newest = newest_loadable(tmp_path)
        assert newest is not None, f"kill {kill}: no checkpoint loads"
        updates_seen.append(updates_of(newest))
        last = tmp_path / "checkpoint_last.pt"
        if not loads(last):  # killed inside fairseq's copy to checkpoint_last.pt
            repaired.append(repair(tmp_path))
            assert loads(last) and updates_of(last) == updates_seen[-1]
    assert updates_seen == sorted(updates_seen) and updates_seen[-1] > updates_seen[0], updates_seen  # each run resumed
    print(f"updates after each kill: {updates_seen}; repaired: {repaired}")
