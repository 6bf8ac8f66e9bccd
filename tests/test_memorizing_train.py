"""memorizing_lm through real fairseq processes: 2 CPU processes each keeping the kNN memory of
its own lanes, a resumed run equal to an uninterrupted one (the checkpoint restores the training
memory), and the fairseq-hydra-train recipe."""
import torch

from helpers import REPO, USER_DIR, json_log_records, long_document_train_args, run_fairseq, train_on_two_cpu_processes

L = 64  # segment; memorizing_tiny: W 32, a 256-slot memory (4 segments) in its top layer


def train_args(data, save_dir, updates, extra=()):
    return long_document_train_args(data, save_dir, "memorizing_tiny", L, updates, extra)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def saved_memory(state):
    """The training memory (keys, values, count) of the one memory layer in a checkpoint."""
    (memory,) = [v for k, v in state["model"].items() if k.endswith("memory._extra_state")]
    return memory["train"]


def replay_memory(checkpoint, data, rank: int, world_size: int, steps: int):
    """The training memory that rank ``rank`` of ``world_size`` builds by streaming its own lanes'
    first ``steps`` segments through the checkpoint's weights (trained with lr 0: still the
    weights every step saw)."""
    from fairseq import checkpoint_utils

    import fairseq_ext  # noqa: F401

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(data), "data_parallel_rank": rank,
                                          "data_parallel_size": world_size})
    model = models[0].train()
    model.reset_caches()
    task.load_dataset("train")
    dataset = task.dataset("train")
    dataset.set_epoch(1)
    with torch.no_grad():
        for step in range(steps):
            net_input = dataset.collater([dataset[step]])["net_input"]
            model(net_input["src_tokens"], start_of_sequence=net_input["start_of_sequence"])
    return model.decoder.layers[-1].attention.memory.get(True)


def test_two_cpu_processes_each_keep_the_memory_of_their_own_lanes(book_data, tmp_path):
    """lr 0 keeps the weights fixed, so rank 0's saved memory can be rebuilt in process from the
    segments of rank 0's lanes, and differs from what rank 1's lanes build."""
    steps = 3
    argv = train_args(book_data, tmp_path, steps, extra=["--disable-validation"])[1:]
    argv[argv.index("--lr") + 1] = "0"
    train_on_two_cpu_processes(argv)
    keys, values, count = saved_memory(load(tmp_path / "checkpoint_last.pt"))
    assert keys.shape == values.shape == (2, 4, 256, 16)  # rank 0's own 2 lanes, not the 4 global ones
    own = replay_memory(tmp_path / "checkpoint_last.pt", book_data, 0, 2, steps)
    other = replay_memory(tmp_path / "checkpoint_last.pt", book_data, 1, 2, steps)
    assert torch.equal(count, own[2]) and count.max() > 0
    torch.testing.assert_close(keys, own[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(values, own[1], atol=1e-5, rtol=0)
    assert not torch.allclose(values, other[1], atol=1e-3)  # rank 1's lanes read other books


def test_a_resumed_run_equals_an_uninterrupted_one_with_its_memory_restored(book_data, tmp_path):
    """checkpoint_last.pt holds the training memory (ModeState extra state), so 6 + 6 updates
    (restart) reproduce 12 bit for bit on CPU; the 256-slot memory wraps (12 segments of 64)."""
    whole = run_fairseq(train_args(book_data, tmp_path / "whole", 12))
    run_fairseq(train_args(book_data, tmp_path / "resumed", 6))
    half = saved_memory(load(tmp_path / "resumed" / "checkpoint_last.pt"))
    assert half[2].min() > 0  # the restart begins with a memory, not an empty one
    second = run_fairseq(train_args(book_data, tmp_path / "resumed", 12))
    assert "Loaded checkpoint" in second.stdout + second.stderr
    a, b = load(tmp_path / "whole" / "checkpoint_last.pt"), load(tmp_path / "resumed" / "checkpoint_last.pt")
    for name, value in a["model"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["model"][name]), name
    for x, y in zip(saved_memory(a), saved_memory(b)):
        assert torch.equal(x, y)
    late = lambda out: [r["loss"] for r in json_log_records(out) if int(r["num_updates"]) > 6]
    assert len(late(whole.stdout + whole.stderr)) == 6
    assert late(whole.stdout + whole.stderr) == late(second.stdout + second.stderr)


def test_hydra_recipe_trains_and_saves_the_memory(book_data, tmp_path):
    run_fairseq(["fairseq-hydra-train", "--config-dir", str(REPO / "hydra_configs" / "memorizing"),
                 "--config-name", "memorizing_tiny", f"task.data={book_data}", f"common.user_dir={USER_DIR}",
                 f"checkpoint.save_dir={tmp_path}", "common.cpu=true", "common.log_format=json",
                 "common.log_interval=1", "optimization.max_update=3", "dataset.batch_size=2",
                 "lr_scheduler.warmup_updates=2", "dataset.validate_interval_updates=3"])
    state = load(tmp_path / "checkpoint_last.pt")
    assert state["optimizer_history"][-1]["num_updates"] == 3
    assert state["cfg"]["model"]["_name"] == "memorizing_tiny"
    keys, _, count = saved_memory(state)
    assert keys.shape == (2, 4, 256, 16) and count.tolist() == [3 * L, 3 * L]  # 3 segments of each lane's book
