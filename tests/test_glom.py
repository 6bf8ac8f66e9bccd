"""GLOM and its ALBERT baseline: the fast step against the per-level reference, build-time
errors, and real fairseq runs (train, hydra, reload, fill_mask, sentence_prediction)."""
import itertools
from argparse import Namespace

import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from helpers import (REPO, USER_DIR, assert_finetuned, finetune_args, json_log_records, run_fairseq, run_python,
                     tiny_train_args)
from fairseq_ext.modules.glom_step import AGGREGATIONS, LAYOUTS, GlomStep


@pytest.mark.parametrize("aggregation, layout", list(itertools.product(AGGREGATIONS, LAYOUTS)))
def test_batched_step_matches_per_level_reference(aggregation, layout):
    torch.manual_seed(0)
    step = GlomStep(24, 4, aggregation, layout, temperature=0.7)
    for p in step.parameters():  # non-trivial biases and norms
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 7, 24)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, 5:] = True
    for mask in (None, padding):
        torch.testing.assert_close(step(x, mask), step.forward_reference(x, mask), atol=1e-5, rtol=1e-5)


def test_layouts_read_different_features():
    step = GlomStep(8, 2, layout="interleaved")
    x = torch.arange(8.0).view(1, 1, 8)
    assert step.split_levels(x)[0, 0, 0].tolist() == [0, 2, 4, 6]
    step.layout = "contiguous"
    assert step.split_levels(x)[0, 0, 0].tolist() == [0, 1, 2, 3]


def build(tiny_data, arch, *extra):
    argv = [str(tiny_data), "--user-dir", USER_DIR, "--task", "masked_lm", "--arch", arch, "--tokens-per-sample", "64", *extra]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    return task.build_model(cfg.model), task


@pytest.mark.parametrize("extra, message", [
    (["--encoder-embed-dim", "30"], "--encoder-embed-dim (30) must be divisible"),
    (["--encoder-attention-heads", "1", "--encoder-embed-dim", "32"], "at least 2 levels"),
    (["--encoder-layers", "0"], "at least one time step (--encoder-layers)"),
    (["--glom-aggregation", "mean"], "--glom-aggregation must be one of"),
    (["--glom-level-layout", "strided"], "--glom-level-layout must be one of"),
])
def test_bad_options_fail_at_build_time_naming_the_option(tiny_data, extra, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(tiny_data, "glom_tiny", *extra)


def test_every_arch_name_builds_its_preset():
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY
    from fairseq_ext.models.albert import AlbertModel
    from fairseq_ext.models.glom import GlomModel

    sizes = {"glom_tiny": (32, 4, 2, 16), "glom_small": (256, 8, 6, 128), "glom_base": (768, 12, 12, 128),
             "glom_paper": (4608, 6, 24, 128), "albert_tiny": (32, 4, 2, 16), "albert_small": (256, 4, 6, 128),
             "albert_base": (768, 12, 12, 128)}
    for arch, expected in sizes.items():
        assert ARCH_MODEL_REGISTRY[arch] is (GlomModel if arch.startswith("glom") else AlbertModel)
        args = Namespace(encoder_layers=None)  # unset, as argparse leaves it
        ARCH_CONFIG_REGISTRY[arch](args)
        assert (args.encoder_embed_dim, args.encoder_attention_heads, args.encoder_layers, args.embedding_size) == expected
        assert (args.dropout, args.attention_dropout) == (0.0, 0.0)
    set_by_user = Namespace(encoder_layers=3)
    ARCH_CONFIG_REGISTRY["glom_tiny"](set_by_user)
    assert set_by_user.encoder_layers == 3  # what the user set wins over the preset


@pytest.mark.parametrize("arch", ["glom_tiny", "albert_tiny"])
def test_positions_follow_tokens_per_sample_and_longer_input_is_refused(tiny_data, arch):
    model, _ = build(tiny_data, arch)  # --tokens-per-sample 64
    assert model.max_positions() == 64
    model.eval()
    model(torch.full((1, 64), 10))
    with pytest.raises(ValueError, match=r"input of 65 tokens is longer than the model accepts \(64; --max-positions\)"):
        model(torch.full((1, 65), 10))
    assert build(tiny_data, arch, "--max-positions", "100")[0].max_positions() == 100


@pytest.mark.parametrize("arch", ["glom_tiny", "albert_tiny", "elc_bert_tiny"])
def test_encoder_layerdrop_is_refused(tiny_data, arch):
    """The plugin's own encoders run every layer: a LayerDrop rate would be silently ignored."""
    with pytest.raises(ValueError, match="--encoder-layerdrop 0.1"):
        build(tiny_data, arch, "--encoder-layerdrop", "0.1")
    build(tiny_data, arch, "--encoder-layerdrop", "0")


@pytest.mark.parametrize("arch, reason", [("glom_tiny", "the one shared GLOM step"),
                                          ("albert_tiny", "the one shared layer"),
                                          ("elc_bert_tiny", "--elc-variant base: each layer's weights mix")])
def test_encoder_layers_to_keep_is_refused(tiny_data, arch, reason):
    """A shared layer (GLOM, ALBERT) or ELC's mixtures cannot lose layers: pruning is an error."""
    with pytest.raises(ValueError, match=f"--encoder-layers-to-keep 0: .* cannot drop layers \\(.*{reason}"):
        build(tiny_data, arch, "--encoder-layers-to-keep", "0")


@pytest.mark.parametrize("arch, embedding_eps, head_eps", [
    ("glom_tiny", 1e-12, 1e-5),  # GlomImpl: GlomEmbeddings config.layer_norm_eps, GlomMLMHead torch default
    ("albert_tiny", 1e-12, 1e-12),  # HF ALBERT: layer_norm_eps for both
])
def test_layer_norm_eps_is_the_originals(tiny_data, arch, embedding_eps, head_eps):
    model, _ = build(tiny_data, arch)
    assert model.encoder.sentence_encoder.embedding.layer_norm.eps == embedding_eps
    assert model.encoder.lm_head.layer_norm.eps == head_eps


def test_initial_state_and_all_hiddens(tiny_data):
    model, task = build(tiny_data, "glom_tiny")
    model.eval()
    assert model.encoder.sentence_encoder.embed_tokens.embedding_dim == 16  # the preset's E, not the default
    tokens = torch.tensor([[0, 10, 11, 12, 2]])
    encoder = model.encoder.sentence_encoder
    state = encoder.initial_state(tokens)
    assert state[..., encoder.step.width:].abs().sum() == 0  # upper levels start at the zero bias
    assert state[..., :encoder.step.width].abs().sum() > 0
    _, extra = model(tokens, features_only=True, return_all_hiddens=True)
    assert len(extra["inner_states"]) == 1 + encoder.time_steps  # the step-0 state and every step
    logits, _ = model(tokens)
    assert logits.shape == (1, 5, len(task.source_dictionary))


def test_parameter_budget_matches_the_original(tiny_data):
    """glom_base's shared layer is ~0.1M parameters (ALGORITHMS.md §1.6); ALBERT shares one full layer."""
    glom, _ = build(tiny_data, "glom_base")
    albert, _ = build(tiny_data, "albert_base")
    step_params = sum(p.numel() for p in glom.encoder.sentence_encoder.step.parameters())
    assert 80_000 < step_params < 120_000
    layer_params = sum(p.numel() for p in albert.encoder.sentence_encoder.shared_layer.parameters())
    assert 7_000_000 < layer_params < 7_200_000


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """{name: (save_dir, train_inner records)} after 20 updates of each tiny model."""
    root = tmp_path_factory.mktemp("glom")
    runs = {"paper": ("glom_tiny", []), "tridiagonal": ("glom_tiny", ["--glom-aggregation", "tridiagonal"]),
            "albert": ("albert_tiny", [])}
    out = {}
    for name, (arch, extra) in runs.items():
        proc = run_fairseq(tiny_train_args(tiny_data, root / name, arch=arch, updates=20, extra=["--lr", "3e-3", *extra]))
        out[name] = (root / name, json_log_records(proc.stdout + proc.stderr), arch)
    return out


@pytest.mark.parametrize("name", ["paper", "tridiagonal", "albert"])
def test_training_lowers_the_loss(trained, name):
    records = trained[name][1]
    assert float(records[-1]["loss"]) < float(records[0]["loss"]) - 0.4


def test_from_pretrained_fill_mask_and_reload(trained, tiny_data):
    code = f"""
import torch
from fairseq.models.roberta import RobertaModel
def load():
    return RobertaModel.from_pretrained({str(trained['tridiagonal'][0])!r}, "checkpoint_last.pt", {str(tiny_data)!r},
        bpe="sentencepiece", sentencepiece_model={str(tiny_data / 'sentencepiece.bpe.model')!r}, user_dir={USER_DIR!r}).eval()
a, b = load(), load()
assert len(a.fill_mask("The game was played in the <mask> .", topk=4)) == 4
tokens = a.encode("The game was played .")
assert torch.equal(a.extract_features(tokens), b.extract_features(tokens))
print("OK", a.model.args.glom_aggregation)
"""
    assert "OK tridiagonal" in run_python(code).stdout


@pytest.mark.parametrize("name", ["paper", "albert"])
def test_pruning_a_checkpoint_at_load_time_is_refused(trained, tiny_data, name):
    """from_pretrained(..., encoder_layers_to_keep="0") passes the option on to build_model."""
    from fairseq import checkpoint_utils

    path = str(trained[name][0] / "checkpoint_last.pt")
    with pytest.raises(ValueError, match="--encoder-layers-to-keep 0: .* cannot drop layers"):
        checkpoint_utils.load_model_ensemble([path], arg_overrides={"data": str(tiny_data), "encoder_layers_to_keep": "0"})
    assert checkpoint_utils.load_model_ensemble([path], arg_overrides={"data": str(tiny_data)})[0]


def test_sentence_prediction_finetunes_from_a_glom_checkpoint(trained, classification_data, tmp_path):
    """sentence_prediction has no --tokens-per-sample: --max-positions gives the pretraining length."""
    assert_finetuned(run_fairseq(finetune_args(classification_data, "glom_tiny",
                                               trained["paper"][0] / "checkpoint_last.pt", tmp_path,
                                               extra=["--max-positions", "64"])))


def test_hydra_yaml_trains(tiny_data, tmp_path):
    proc = run_fairseq([
        "fairseq-hydra-train", "--config-dir", REPO / "hydra_configs" / "glom", "--config-name", "glom_base",
        f"task.data={tiny_data}", f"common.user_dir={USER_DIR}", "model._name=glom_tiny", "task.tokens_per_sample=64",
        "dataset.num_workers=0", "optimization.max_update=4", "common.cpu=true", f"checkpoint.save_dir={tmp_path}"],
        cwd=tmp_path)
    assert "done training" in proc.stdout + proc.stderr and (tmp_path / "checkpoint_last.pt").is_file()
