"""Matrix columns ``checkpoint``, ``hub_reload`` and ``unknown_arch``: every arch, built at tiny
size, trained one update by fairseq's Trainer and saved by ``Trainer.save_checkpoint`` (what
fairseq-train calls), reloads through ``checkpoint_utils`` and through the stock hub
(``RobertaModel`` / ``TransformerLanguageModel.from_pretrained``) to the same state and outputs;
a checkpoint of an arch this version does not register fails with a message saying what to do."""
import pytest
import torch

from helpers import USER_DIR
from reliability.archs import is_causal, model_flags, params, representatives, task_flags

ARCHS = params(representatives())


def data_of(arch, tiny_data, book_data):
    return book_data if is_causal(arch) else tiny_data


def setup(arch, data, seed=0, extra=()):
    """cfg, task and model of a tiny ``arch`` as fairseq-train builds them (train mode)."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    criterion = "cross_entropy" if is_causal(arch) else "masked_lm"
    argv = [*task_flags(arch, data), "--user-dir", USER_DIR, "--criterion", criterion, "--cpu",
            "--optimizer", "adam", "--lr", "1e-3", "--num-workers", "0", "--batch-size", "2",
            "--seed", str(seed), *model_flags(arch), *extra]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(seed)
    return cfg, task, task.build_model(cfg.model), task.build_criterion(cfg.criterion)


def probe(arch, task):
    """A fixed batch of 2 sequences over the model's vocabulary."""
    d = task.source_dictionary
    tokens = torch.randint(d.nspecial, len(d) - 1, (2, 64 if is_causal(arch) else 32),
                           generator=torch.Generator().manual_seed(7))
    return tokens


def outputs(model, arch, tokens):
    model.eval()
    with torch.no_grad():
        if is_causal(arch):
            return model(tokens, start_of_sequence=torch.tensor([True, True]))[0]
        return model(tokens)[0]


def assert_same(a, b, where="state"):
    """Tensors, dicts, lists, tuples and plain values compared exactly."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture
def saved(request, tmp_path, tiny_data, book_data):
    """(arch, data, checkpoint path, model state, outputs on the probe) after one update."""
    from fairseq.trainer import Trainer

    arch = request.param
    data = data_of(arch, tiny_data, book_data)
    cfg, task, model, criterion = setup(arch, data)
    trainer = Trainer(cfg, task, model, criterion)
    epoch_itr = trainer.get_train_iterator(epoch=1)
    sample = next(epoch_itr.next_epoch_itr(shuffle=False))
    trainer.train_step([sample])
    path = tmp_path / "checkpoint_last.pt"
    trainer.consolidate_optimizer()  # as checkpoint_utils.save_checkpoint does first
    trainer.save_checkpoint(str(path), {"train_iterator": epoch_itr.state_dict(), "val_loss": None})
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}
    return arch, data, path, state, outputs(model, arch, probe(arch, task))


@pytest.mark.parametrize("saved", ARCHS, indirect=True)
def test_checkpoint(saved):
    """Saved by Trainer.save_checkpoint, reloaded by checkpoint_utils: the same state (extra states too) and outputs."""
    from fairseq import checkpoint_utils

    arch, data, path, state, expected = saved
    torch.manual_seed(123)  # the reloaded model is first built with other random weights
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides={"data": str(data)})
    assert cfg.model.arch == arch
    assert_same(state, models[0].state_dict())
    assert torch.equal(outputs(models[0], arch, probe(arch, task)), expected)


@pytest.mark.parametrize("saved", ARCHS, indirect=True)
def test_hub_reload(saved):
    """Reloaded by stock RobertaModel / TransformerLanguageModel.from_pretrained: the same state and outputs."""
    from fairseq.models.roberta import RobertaModel
    from fairseq.models.transformer_lm import TransformerLanguageModel

    arch, data, path, state, expected = saved
    hub = TransformerLanguageModel if is_causal(arch) else RobertaModel
    torch.manual_seed(123)
    loaded = hub.from_pretrained(str(path.parent), path.name, str(data), bpe="sentencepiece",
                                 sentencepiece_model=str(data / "sentencepiece.bpe.model"), user_dir=USER_DIR)
    model = loaded.models[0] if is_causal(arch) else loaded.model
    assert_same(state, model.state_dict())
    assert torch.equal(outputs(model, arch, probe(arch, loaded.task)), expected)


@pytest.mark.parametrize("saved", ARCHS, indirect=True)
def test_unknown_arch(saved, tmp_path):
    """A checkpoint naming an arch this version lacks (a newer plugin's) says what to do: through
    ``checkpoint_utils`` with the plugin's tasks (their ``build_model`` checks), through
    ``fairseq_ext.hub.from_pretrained`` with stock ``masked_lm`` (which has no hook; README)."""
    from fairseq import checkpoint_utils

    from fairseq_ext import hub

    arch, data, path, _, _ = saved
    state = torch.load(path, map_location="cpu", weights_only=False)
    model_cfg = state["cfg"]["model"]  # an argparse Namespace for argparse-built models
    model_cfg.arch = model_cfg._name = f"{arch}_from_the_future"
    torch.save(state, tmp_path / "future.pt")
    with pytest.raises(ValueError) as failed:
        if is_causal(arch):
            checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "future.pt")], arg_overrides={"data": str(data)})
        else:
            hub.from_pretrained(tmp_path, "future.pt", data)
    message = str(failed.value)
    assert f"arch '{arch}_from_the_future' is not registered" in message and "upgrade fairseq_ext" in message


@pytest.mark.parametrize("saved", ARCHS, indirect=True)
def test_other_dictionary(saved, tmp_path):
    """Loading with a dictionary that is not the checkpoint's names the dictionary, not a shape."""
    from fairseq import checkpoint_utils

    arch, data, path, _, _ = saved
    other = tmp_path / "other-data"
    other.mkdir()
    for f in data.iterdir():  # the same data dir, its dict.txt 20 symbols shorter
        if f.is_file() and f.name != "dict.txt":
            (other / f.name).symlink_to(f)
    (other / "dict.txt").write_text("".join((data / "dict.txt").read_text().splitlines(keepends=True)[:-20]))
    with pytest.raises(ValueError, match="the dictionary does not match the checkpoint: .* dict.txt the model was trained with"):
        checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides={"data": str(other)})
