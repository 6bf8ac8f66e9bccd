"""One boolean convention for every model (fairseq_ext.models._common): each boolean option
takes a value (``--opt true`` / ``--opt false``; a bare ``--opt`` means true), reaches the
model, and the model builds and runs with it either way."""
import pytest
import torch
from fairseq import options, tasks
from fairseq.models import ARCH_MODEL_REGISTRY

from fairseq_ext.models._common import option_fields, parse_bool

# one tiny arch of every family
ARCHS = ("roberta_ext_zero_clap_tiny", "glom_tiny", "albert_tiny", "ltg_bert_tiny")


def boolean_options(arch):
    return [f.name for f in option_fields(ARCH_MODEL_REGISTRY[arch].config_class) if f.type is bool]


def parse(data_dir, arch, *flags):
    argv = [str(data_dir), "--task", "masked_lm", "--arch", arch, "--tokens-per-sample", "16", *flags]
    return options.parse_args_and_arch(options.get_training_parser(), argv)


@pytest.fixture(scope="module")
def dict_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bool-dict")
    (root / "dict.txt").write_text("".join(f"w{i} 1\n" for i in range(40)))
    return root


def test_every_family_has_the_shared_boolean():
    for arch in ARCHS:
        assert "bf16_autocast" in boolean_options(arch), arch


@pytest.mark.parametrize("arch", ARCHS)
def test_every_boolean_switches_both_ways(arch, dict_dir):
    for name in boolean_options(arch):
        flag = "--" + name.replace("_", "-")
        for value in (True, False):
            args = parse(dict_dir, arch, flag, str(value).lower())
            assert getattr(args, name) is value, (arch, name, value)
            task = tasks.setup_task(args)
            model = task.build_model(args)
            assert getattr(model.args, name) is value, (arch, name, value)
            model.eval()
            tokens = torch.randint(4, 40, (2, 10))
            logits, _ = model(tokens)
            assert not torch.isnan(logits).any() and logits.shape[:2] == (2, 10), (arch, name, value)
        assert getattr(parse(dict_dir, arch, flag), name) is True  # bare flag means true


def test_bad_boolean_names_the_value(dict_dir):
    with pytest.raises(SystemExit):
        parse(dict_dir, "glom_tiny", "--bf16-autocast", "maybe")
    with pytest.raises(Exception, match="expected a boolean"):
        parse_bool("maybe")
