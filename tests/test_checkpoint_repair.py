"""fairseq_ext.checkpoints: a checkpoint_last.pt truncated by a kill inside fairseq's copy is
reported with the newest whole checkpoint, and ``--repair`` puts that one in its place."""
import pytest
import torch

from fairseq_ext import checkpoints


def fake_checkpoint(path, updates):
    torch.save({"model": {"w": torch.full((3,), float(updates))},
                "optimizer_history": [{"num_updates": updates}]}, path)


def test_a_truncated_last_checkpoint_is_named_and_repaired(tmp_path, capsys):
    fake_checkpoint(tmp_path / "checkpoint_1_4.pt", 4)
    fake_checkpoint(tmp_path / "checkpoint_1_5.pt", 5)
    fake_checkpoint(tmp_path / "checkpoint_last.pt", 5)
    data = (tmp_path / "checkpoint_last.pt").read_bytes()
    (tmp_path / "checkpoint_last.pt").write_bytes(data[:len(data) // 2])  # killed mid-copy
    with pytest.raises(SystemExit, match="checkpoint_last.pt does not load .* --restore-file .*checkpoint_1_5.pt"):
        checkpoints.main([str(tmp_path)])
    checkpoints.main([str(tmp_path), "--repair"])
    assert "replaced by checkpoint_1_5.pt (5 updates)" in capsys.readouterr().out
    assert checkpoints.updates_of(tmp_path / "checkpoint_last.pt") == 5 and not list(tmp_path.glob("*.tmp"))
    checkpoints.main([str(tmp_path)])
    assert "loads (5 updates)" in capsys.readouterr().out


def test_nothing_loadable_is_said_plainly(tmp_path):
    (tmp_path / "checkpoint_last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SystemExit, match="no checkpoint in .* does"):
        checkpoints.main([str(tmp_path)])
    with pytest.raises(ValueError, match="no loadable checkpoint"):
        checkpoints.repair(tmp_path)
