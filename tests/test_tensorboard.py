"""--tensorboard-logdir works out of the box (tensorboardX is a pinned requirement): a tiny real
fairseq-train writes event files with the train loss, and fairseq no longer asks to install it."""
import struct

from helpers import run_fairseq, tiny_train_args


def read_scalars(event_file):
    """(tag, step, value) of every scalar in a TFRecord event file (length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    scalars, raw, pos = [], event_file.read_bytes(), 0
    while pos < len(raw):
        (length,) = struct.unpack("<Q", raw[pos:pos + 8])
        event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        scalars += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return scalars


def test_tensorboard_logdir_gets_train_loss(tiny_data, tmp_path):
    logdir = tmp_path / "tb"
    proc = run_fairseq(tiny_train_args(tiny_data, tmp_path / "ck", updates=4,
                                       extra=["--tensorboard-logdir", logdir]))
    assert "Please install tensorboardX" not in proc.stdout + proc.stderr
    def losses(subdir):
        files = sorted((logdir / subdir).glob("events.out.tfevents.*"))
        assert files and all(f.stat().st_size > 0 for f in files), f"no event file in {logdir / subdir}"
        return [(step, v) for f in files for tag, step, v in read_scalars(f) if tag == "loss"]

    inner, epoch = losses("train_inner"), losses("train")  # per --log-interval, per epoch
    assert [step for step, _ in inner] == [2, 4] and [step for step, _ in epoch] == [4]
    assert all(0 < v < 20 for _, v in inner + epoch)  # bits per token, 1000-piece vocabulary
