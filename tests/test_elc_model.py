"""ELC-BERT / LTG-BERT model and recipe: fast vs reference encoder for every variant, init and
parameter groups, clear build errors, the sequence-length switch, and real fairseq runs
(train with the ELC recipe, reload, fill_mask, sentence_prediction, hydra)."""
from argparse import Namespace

import pytest
import torch
from fairseq import tasks
from fairseq.models import ARCH_MODEL_REGISTRY, ARCH_CONFIG_REGISTRY

from helpers import REPO, USER_DIR, assert_finetuned, finetune_args, json_log_records, run_fairseq, run_python, set_arg
from fairseq_ext.models.elc_bert import ELC_VARIANTS, ElcBertModel
from fairseq_ext.tasks.elc_span_masked_lm import ElcSpanMaskedLMConfig


def make_task(data, **overrides):
    cfg = ElcSpanMaskedLMConfig(data=str(data), tokens_per_sample=32, max_update=100, seed=1,
                                train_subset="train", **overrides)
    return tasks.get_task("elc_span_masked_lm").setup_task(cfg)


def build(task, arch="elc_bert_zero_tiny", **overrides):
    args = Namespace(arch=arch, **overrides)
    ARCH_CONFIG_REGISTRY[arch](args)
    return ElcBertModel.build_model(args, task)


@pytest.fixture(scope="module")
def task(tiny_data):
    return make_task(tiny_data)


def test_archs_registered_without_clashing():
    for size in ("tiny", "small", "base"):
        assert ARCH_MODEL_REGISTRY[f"ltg_bert_{size}"] is ElcBertModel
        for variant in ELC_VARIANTS[1:]:
            assert ARCH_MODEL_REGISTRY[f"elc_bert_{variant}_{size}"] is ElcBertModel


@pytest.mark.parametrize("variant", ELC_VARIANTS)
def test_fast_encoder_matches_reference(task, variant):
    torch.manual_seed(0)
    model = build(task, "ltg_bert_tiny", elc_variant=variant).eval()
    with torch.no_grad():  # move α off its init so the mixtures matter
        for p in model.parameters():
            if p.dim() == 1 and p.numel() <= 4:
                p.normal_()
    tokens = torch.randint(4, 100, (2, 9))
    tokens[1, 6:] = task.source_dictionary.pad()
    encoder = model.encoder.sentence_encoder
    fast = encoder(tokens, return_all_hiddens=True)
    ref = encoder(tokens, return_all_hiddens=True, reference=True)
    torch.testing.assert_close(fast["encoder_out"][0], ref["encoder_out"][0], atol=1e-5, rtol=1e-4)
    assert len(fast["encoder_states"]) == 4 + (variant == "weighted_output")  # h_0 .. h_3 (+ the output mixture)
    # gradients too: the fast mixtures read a buffer whose later rows are written after them
    probe = torch.randn_like(fast["encoder_out"][0])
    params = [p for p in encoder.parameters() if p.requires_grad]
    g_fast = torch.autograd.grad((fast["encoder_out"][0] * probe).sum(), params)
    g_ref = torch.autograd.grad((ref["encoder_out"][0] * probe).sum(), params)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_variant_structure_and_init(task):
    base = build(task, "elc_bert_tiny")
    assert [m.layer_weights.tolist() for m in base.encoder.sentence_encoder.mixings] == [[1.0], [0.0, 1.0], [0.0, 0.0, 1.0]]
    weighted = build(task, "elc_bert_weighted_output_tiny").encoder.sentence_encoder
    assert weighted.output_mixing.layer_weights.tolist() == [0.0] * 4
    assert build(task, "ltg_bert_tiny").encoder.sentence_encoder.mixings is None
    # depth-scaled init: layer l's FFN std is sqrt(2/(5d)) * sqrt(1/(2(l+1)))
    big = build(task, "ltg_bert_tiny", encoder_embed_dim=128, encoder_ffn_embed_dim=512, encoder_layers=3)
    stds = [layer.ffn.fc1.weight.std().item() for layer in big.encoder.sentence_encoder.layers]
    expected = [(2 / (5 * 128)) ** 0.5 * (1 / (2 * (i + 1))) ** 0.5 * 0.88 for i in range(3)]  # 0.88: ±2σ truncation
    assert stds == pytest.approx(expected, rel=0.05)


def test_each_weight_is_initialised_once_with_the_originals_init(task, monkeypatch):
    """No BERT init over the model (RobertaModel's, build_model's) and no second pass: every
    matrix gets one truncated normal, as the original's modules initialise themselves."""
    import fairseq.models.roberta.model as roberta_model

    drawn, bert_inits = [], []
    trunc_normal = torch.nn.init.trunc_normal_
    monkeypatch.setattr(torch.nn.init, "trunc_normal_", lambda t, *a, **k: drawn.append(t) or trunc_normal(t, *a, **k))
    monkeypatch.setattr(roberta_model, "init_bert_params", lambda module: bert_inits.append(module))
    model = build(task, "elc_bert_weighted_output_tiny")
    assert bert_inits == []
    matrices = [p for name, p in model.named_parameters() if p.dim() == 2]
    assert sorted(map(id, drawn)) == sorted(map(id, matrices))  # each exactly once (the tied head weight too)


def test_head_init_is_the_originals(task):
    """MaskClassifier.initialize: dense weight truncated normal σ = sqrt(2/(5d)) cut at ±2σ, zero biases."""
    d = 512
    head = build(task, "ltg_bert_tiny", encoder_embed_dim=d, encoder_ffn_embed_dim=64).encoder.lm_head
    sigma = (2 / (5 * d)) ** 0.5
    weight = head.dense.weight.detach()
    assert weight.abs().max().item() <= 2 * sigma
    assert weight.abs().max().item() > 1.9 * sigma  # the cut, not a narrower normal (init_bert_params: σ 0.02)
    assert weight.std().item() == pytest.approx(0.8796 * sigma, rel=0.02)  # std of N(0, σ) cut at ±2σ
    assert weight.mean().abs().item() < 0.01 * sigma
    assert not head.dense.bias.any() and not head.bias.any()


def test_build_is_deterministic_for_a_seed(task):
    def weights(seed):
        torch.manual_seed(seed)
        return build(task, "elc_bert_zero_tiny").state_dict()

    a, b, c = weights(5), weights(5), weights(6)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.lm_head.dense.weight"], c["encoder.lm_head.dense.weight"])


def dropped(module, x, *args):
    """Whether ``module`` in training mode changes its output (some dropout is active)."""
    module.eval()
    reference = module(x, *args)
    module.train()
    return not torch.equal(module(x, *args), reference)


@pytest.mark.parametrize("dropout, attention_dropout", [(0.0, 0.5), (0.5, 0.0)])
def test_attention_uses_the_attention_dropout_rate_and_the_rest_dropout(task, dropout, attention_dropout):
    """The original's Attention has one Dropout(attention_probs_dropout_prob) for the relative
    table, the probabilities and the output; embedding, FFN and head use hidden_dropout_prob."""
    torch.manual_seed(0)
    model = build(task, "ltg_bert_tiny", dropout=dropout, attention_dropout=attention_dropout)
    encoder = model.encoder.sentence_encoder
    attention = encoder.layers[0].attention
    x, table = torch.randn(9, 2, 32), torch.randn(*encoder.relative_table.shape)
    attention_active = attention_dropout > 0
    assert dropped(attention, x, table) == attention_active
    # relative table: a dropped entry gets no gradient (row K-1 is distance 0, used by every query)
    attention.train()
    table.requires_grad_(True)
    (attention(x, table) * torch.randn(9, 2, 32)).sum().backward()  # a plain sum has no gradient through the LayerNorm
    zero_share = (table.grad[attention.bucket_size - 1] == 0).float().mean().item()
    assert (zero_share > 0.2) == attention_active
    # probabilities: a zero table leaves only them and the output dropout; kept outputs would be
    # the eval outputs / (1 - p) if the probabilities were not dropped
    zeros = torch.zeros_like(table)
    attention.eval()
    reference = attention(x, zeros)
    attention.train()
    out = attention(x, zeros)
    kept = out != 0
    assert (kept.float().mean().item() < 0.7) == attention_active  # the output dropout
    scale = 1.0 / (1.0 - attention_dropout)
    assert (not torch.allclose(out[kept], reference[kept] * scale, atol=1e-5)) == attention_active
    hidden_active = dropout > 0
    assert dropped(encoder.layers[0].ffn, x) == hidden_active
    assert dropped(encoder.dropout, x) == hidden_active  # embedding
    assert dropped(model.encoder.lm_head, torch.randn(2, 9, 32)) == hidden_active


def test_no_decay_tags_follow_the_original_groups(task):
    model = build(task, "elc_bert_zero_tiny")
    tags = {name: p.no_weight_decay for name, p in model.named_parameters()}
    assert tags["encoder.sentence_encoder.embed_tokens.weight"] and tags["encoder.sentence_encoder.relative_table"]
    assert tags["encoder.sentence_encoder.mixings.1.layer_weights"] and tags["encoder.lm_head.bias"]
    assert tags["encoder.sentence_encoder.layers.0.attention.post_norm.weight"]
    assert not tags["encoder.sentence_encoder.layers.0.attention.in_proj_qk.weight"]
    assert not tags["encoder.sentence_encoder.layers.0.ffn.fc1.weight"] and not tags["encoder.lm_head.dense.weight"]


@pytest.mark.parametrize("override, message", [
    (dict(elc_variant="bogus"), "elc-variant"),
    (dict(position_bucket_size=7), "position-bucket-size"),
    (dict(encoder_attention_heads=5), "encoder-attention-heads"),
])
def test_bad_options_fail_at_build_time(task, override, message):
    with pytest.raises(ValueError, match=message):
        build(task, "elc_bert_zero_tiny", **override)


def test_bad_task_options_fail_clearly(tiny_data):
    with pytest.raises(ValueError, match="short-p"):
        make_task(tiny_data, short_p=1.5)


def test_length_switch_keeps_tokens_per_update(tiny_data):
    task = make_task(tiny_data, long_after=0.5, short_p=0.0)
    task.load_dataset("train")
    model = build(task)

    def first_batch():
        itr = task.get_batch_iterator(task.dataset("train"), max_sentences=8, max_positions=(32, 4096), seed=1, epoch=1)
        return next(itr.next_epoch_itr(shuffle=False))

    short = first_batch()
    task.num_updates = 49
    assert torch.equal(first_batch()["net_input"]["src_tokens"], short["net_input"]["src_tokens"])
    task.num_updates = 50  # 0.5 x max_update: from now on 4x longer, 4x fewer
    long = first_batch()
    assert short["net_input"]["src_tokens"].shape == (8, 32)
    assert long["net_input"]["src_tokens"].shape == (2, 128)
    assert long["net_input"]["src_tokens"].numel() == short["net_input"]["src_tokens"].numel()  # tokens per update
    assert model(**long["net_input"])[0].shape[:2] == (2, 128)  # no absolute positions: any length


def elc_train_args(data, save_dir, arch, updates=40, extra=()):
    return ["fairseq-train", str(data), "--user-dir", USER_DIR, "--task", "elc_span_masked_lm",
            "--criterion", "elc_masked_lm", "--arch", arch, "--cpu", "--num-workers", "0",
            "--tokens-per-sample", "32", "--sample-break-mode", "none", "--batch-size", "16",
            "--optimizer", "lamb_elc", "--lr", "1e-2", "--lr-scheduler", "elc_cosine", "--clip-norm", "2.0",
            "--max-update", str(updates), "--log-format", "json", "--log-interval", "5",
            "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--seed", "1", *extra]


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("elc")
    out = {}
    for arch in ("elc_bert_zero_tiny", "ltg_bert_tiny"):
        proc = run_fairseq(elc_train_args(tiny_data, root / arch, arch, extra=["--label-smoothing", "0.1"]))
        out[arch] = (root / arch, json_log_records(proc.stdout + proc.stderr))
    return out


@pytest.mark.parametrize("arch", ["elc_bert_zero_tiny", "ltg_bert_tiny"])
def test_training_lowers_the_loss(trained, arch):
    records = trained[arch][1]
    assert float(records[-1]["loss"]) < float(records[0]["loss"]) - 0.5
    assert float(records[-1]["gflop"]) > 0


def test_from_pretrained_fill_mask_long_input_and_reload(trained, tiny_data):
    code = f"""
import torch
from fairseq.models.roberta import RobertaModel
def load():
    return RobertaModel.from_pretrained({str(trained['elc_bert_zero_tiny'][0])!r}, "checkpoint_last.pt", {str(tiny_data)!r},
        bpe="sentencepiece", sentencepiece_model={str(tiny_data / 'sentencepiece.bpe.model')!r}, user_dir={USER_DIR!r}).eval()
a, b = load(), load()
assert len(a.fill_mask("The game was played in the <mask> .", topk=4)) == 4
tokens = a.encode("The game was played . " * 40)
assert tokens.numel() > 128  # 4x the training length
assert torch.equal(a.extract_features(tokens), b.extract_features(tokens))
print("OK", a.model.args.elc_variant)
"""
    assert "OK zero" in run_python(code).stdout


def test_ltg_bert_checkpoint_prunes_at_load_time_and_elc_refuses(trained, tiny_data):
    """from_pretrained(..., encoder_layers_to_keep="0,2") (its arg_overrides): LTG-BERT keeps
    layers 0 and 2 exactly; ELC's layer mixtures cannot lose a layer, so it is an error."""
    from fairseq import checkpoint_utils

    def load(arch, **overrides):
        path = str(trained[arch][0] / "checkpoint_last.pt")
        [model], _ = checkpoint_utils.load_model_ensemble([path], arg_overrides={"data": str(tiny_data), **overrides})
        return model.eval()

    full, pruned = load("ltg_bert_tiny"), load("ltg_bert_tiny", encoder_layers_to_keep="0,2")
    assert len(pruned.encoder.sentence_encoder.layers) == 2
    layers = full.encoder.sentence_encoder.layers
    full.encoder.sentence_encoder.layers = torch.nn.ModuleList([layers[0], layers[2]])
    tokens = torch.randint(4, 100, (2, 16))
    torch.testing.assert_close(pruned(tokens)[0], full(tokens)[0])
    assert not torch.allclose(pruned(tokens)[0], load("ltg_bert_tiny")(tokens)[0], atol=1e-3)
    with pytest.raises(ValueError, match="--encoder-layers-to-keep 0,2: ElcBertModel cannot drop layers "
                                         r"\(--elc-variant zero"):
        load("elc_bert_zero_tiny", encoder_layers_to_keep="0,2")


def test_sentence_prediction_finetunes_from_an_elc_checkpoint(trained, classification_data, tmp_path):
    assert_finetuned(run_fairseq(finetune_args(classification_data, "elc_bert_zero_tiny",
                                               trained["elc_bert_zero_tiny"][0] / "checkpoint_last.pt", tmp_path)))


def test_length_switch_in_a_real_run(tiny_data, tmp_path):
    """Training on the small valid split (short epochs), max_update 40, long_after 0.4: the
    epochs that start after update 16 run at 4x length and 1/4 batch."""
    argv = elc_train_args(tiny_data, tmp_path, "elc_bert_tiny", updates=40,
                          extra=["--long-after", "0.4", "--train-subset", "valid", "--disable-validation", "--log-interval", "1"])
    argv = set_arg(set_arg(argv, "--tokens-per-sample", "16"), "--batch-size", "64")
    records = json_log_records(run_fairseq(argv).stdout)
    bsz = [float(r["bsz"]) for r in records]
    assert bsz[0] == 64 and bsz[-1] == 16  # 4x fewer sentences at the end ...
    assert abs(float(records[-1]["wpb"]) - float(records[0]["wpb"])) < 0.25 * float(records[0]["wpb"])  # ... same tokens


def test_hydra_yaml_trains(tiny_data, tmp_path):
    proc = run_fairseq([
        "fairseq-hydra-train", "--config-dir", REPO / "hydra_configs" / "elc_bert", "--config-name", "elc_bert_small",
        f"task.data={tiny_data}", f"common.user_dir={USER_DIR}", "model._name=elc_bert_normalized_tiny",
        "task.tokens_per_sample=32", "dataset.batch_size=8", "dataset.num_workers=0", "optimization.max_update=4",
        "common.cpu=true", f"checkpoint.save_dir={tmp_path}"], cwd=tmp_path)
    assert "done training" in proc.stdout + proc.stderr and (tmp_path / "checkpoint_last.pt").is_file()


def test_renamed_archs_still_build_the_same_model(tmp_path):
    """Checkpoints name their arch: the pre-rename elc_bert_base_<size> names stay registered
    and give the model of the new name."""
    for old, new in (("elc_bert_base_tiny", "elc_bert_tiny"), ("elc_bert_base_small", "elc_bert_small")):
        a, b = Namespace(), Namespace()
        ARCH_CONFIG_REGISTRY[old](a)
        ARCH_CONFIG_REGISTRY[new](b)
        assert vars(a) == vars(b) and b.elc_variant == "base"
    assert ARCH_CONFIG_REGISTRY["elc_bert_base"] is not ARCH_CONFIG_REGISTRY["elc_bert_small"]
    c = Namespace()
    ARCH_CONFIG_REGISTRY["elc_bert_base"](c)
    assert (c.elc_variant, c.encoder_embed_dim) == ("base", 768)
