"""A fairseq-train stopped mid-epoch by --max-update exits 0 with the plugin loaded.

Stock fairseq 0.12.3.1 (torch 2.13, Python 3.11) aborts such runs most of the time after "done
training" (``terminate called without an active exception``, exit 134: 6 of 8 tries of a tiny
stock roberta here), because its prefetching daemon thread is inside torch's C++ code at
finalization; ``fairseq_ext.data.prefetch_exit`` stops that thread in an atexit callback."""
import subprocess
import sys
import time

from fairseq.data.iterators import BufferedIterator
from helpers import BIN, subprocess_env, tiny_train_args

from fairseq_ext.data.prefetch_exit import stop_prefetching_threads

TRIES = 3  # were the fix gone, all 3 would pass with probability about (2/8)^3
# A model so small that its updates outpace the prefetching thread: at the stop the thread is busy
# collating a batch (in torch) rather than waiting on its full queue, the case that aborts.
FASTER_THAN_ITS_DATA = ["--encoder-layers", "1", "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
                        "--encoder-attention-heads", "2"]


def test_runs_stopped_mid_epoch_exit_cleanly(tiny_data, tmp_path):
    for attempt in range(TRIES):
        argv = tiny_train_args(tiny_data, tmp_path / str(attempt), updates=3,
                               extra=["--disable-validation", "--no-save", *FASTER_THAN_ITS_DATA])
        proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=300,
                              env=subprocess_env())
        assert "done training" in proc.stderr + proc.stdout
        assert proc.returncode == 0, f"try {attempt}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
        assert "terminate called" not in proc.stderr


class SlowSource:
    """100 items, each taking a moment to make, like batches being collated."""

    def __init__(self):
        self.made = 0

    def __len__(self):
        return 100

    def __iter__(self):
        for i in range(100):
            time.sleep(0.01)
            self.made += 1
            yield i


def test_stopping_ends_the_consumer_after_at_most_one_more_item():
    source = SlowSource()
    buffered = BufferedIterator(4, source)
    assert next(buffered) == 0  # the consumer thread runs and fills its queue of 4
    time.sleep(1.0)  # the queue is full: the consumer waits in put with the next item made
    made_before = source.made
    assert stop_prefetching_threads() >= 1  # ours, and any that earlier tests left running
    assert not buffered._consumer.is_alive()
    assert source.made <= made_before + 1 < 100
