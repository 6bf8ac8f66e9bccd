"""roberta_ext in-process: every variant, the CLAP head, zero/self masking, old checkpoints,
configuration errors and the masked_lm_ext dictionary."""
from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY
from fairseq.models.roberta import RobertaModel
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask

import fairseq_ext  # noqa: F401  (registers)
from fairseq_ext.models.roberta_ext import VARIANTS, ClapHead, RobertaExtModel
from fairseq_ext.tasks.masked_lm_ext import MaskedLMExtConfig, MaskedLMExtTask, OutOfVocabMaskDictionary

VOCAB = [f"w{i}" for i in range(40)]


def _dictionary():
    d = Dictionary()
    for w in VOCAB:
        d.add_symbol(w)
    return d


def _task():
    return MaskedLMTask(MaskedLMConfig(data="unused", tokens_per_sample=32), _dictionary())


def build(arch, task=None, **overrides):
    torch.manual_seed(0)
    args = Namespace(arch=arch, max_positions=32, **overrides)
    ARCH_CONFIG_REGISTRY[arch](args)
    return RobertaExtModel.build_model(args, task or _task()).eval()


def _tokens(task, lengths=(12, 7), seq_len=12, mask_at=(3, 5)):
    d = task.source_dictionary
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(d.nspecial, d.nspecial + len(VOCAB), (len(lengths), seq_len), generator=gen)
    tokens[:, 0] = d.bos()
    for row, length in enumerate(lengths):
        tokens[row, length - 1] = d.eos()
        tokens[row, length:] = d.pad()
    tokens[:, list(mask_at)] = task.mask_idx
    return tokens


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_encoder_matches_reference_attention(variant):
    task = _task()
    model = build(f"roberta_ext_{variant}_tiny", task)
    tokens = _tokens(task)
    features, _ = model(tokens, features_only=True)
    model.encoder.sentence_encoder.reference_attention = True
    reference, _ = model(tokens, features_only=True)
    real = tokens.ne(task.source_dictionary.pad())
    torch.testing.assert_close(features[real], reference[real], atol=1e-5, rtol=1e-5)


def test_zero_mask_inputs_are_exact_zero_vectors():
    task = _task()
    model = build("roberta_ext_zero_clap_tiny", task)
    tokens = _tokens(task)
    x, embed = model.encoder.sentence_encoder.forward_embedding(tokens)
    masked = tokens.eq(task.mask_idx)
    assert masked.sum() == 4
    assert torch.count_nonzero(x[masked]) == 0 and torch.count_nonzero(embed[masked]) == 0
    assert bool((x[~masked].norm(dim=-1) > 0).all())


def test_zero_mask_keeps_mask_out_of_the_vocabulary():
    task = _task()
    zero, baseline = build("roberta_ext_zero_clap_tiny", task), build("roberta_ext_baseline_tiny", task)
    vocab = len(task.source_dictionary)
    assert task.mask_idx == vocab - 1
    assert zero.encoder.sentence_encoder.embed_tokens.num_embeddings == vocab - 1
    assert baseline.encoder.sentence_encoder.embed_tokens.num_embeddings == vocab
    logits, _ = zero(_tokens(task))
    assert logits.shape[-1] == vocab - 1


def test_zero_mask_rejects_a_mask_symbol_inside_the_vocabulary():
    d = _dictionary()
    d.add_symbol("<mask>")
    d.add_symbol("later")
    task = MaskedLMTask(MaskedLMConfig(data="unused"), d)
    with pytest.raises(ValueError, match="zero-mask"):
        build("roberta_ext_zero_clap_tiny", task)


def test_clap_head_is_beta_times_cosine_logits_with_tied_weights():
    task = _task()
    model = build("roberta_ext_learned_clap_tiny", task, initial_beta=3.0)
    head = model.encoder.lm_head
    assert isinstance(head, ClapHead)
    assert head.weight is model.encoder.sentence_encoder.embed_tokens.weight
    assert sorted(n for n, _ in head.named_parameters()) == ["beta", "weight"]
    assert head.beta.item() == 3.0

    tokens = _tokens(task)
    features, _ = model(tokens, features_only=True)
    model.train()
    masked = tokens.eq(task.mask_idx)
    torch.manual_seed(0)
    logits_masked, _ = model(tokens, masked_tokens=masked)
    torch.manual_seed(0)
    features_train, _ = model(tokens, features_only=True)
    assert logits_masked.shape == (int(masked.sum()), len(task.source_dictionary))
    expected = 3.0 * features_train[masked] @ F.normalize(head.weight, dim=-1).t()
    torch.testing.assert_close(logits_masked, expected)

    model.eval()
    logits_all, _ = model(tokens)
    assert logits_all.shape == tokens.shape + (len(task.source_dictionary),)


def test_l2norm_embedding_follows_clap_and_can_be_switched_off():
    task = _task()
    tokens = _tokens(task)
    on = build("roberta_ext_learned_clap_tiny", task)
    off = build("roberta_ext_learned_clap_tiny", task, l2norm_embedding=False)
    assert on.args.l2norm_embedding and not off.args.l2norm_embedding
    _, embed_on = on.encoder.sentence_encoder.forward_embedding(tokens)
    _, embed_off = off.encoder.sentence_encoder.forward_embedding(tokens)
    torch.testing.assert_close(embed_on.norm(dim=-1), torch.ones(tokens.shape))
    assert not torch.allclose(embed_off.norm(dim=-1), torch.ones(tokens.shape))


def test_sqrt_d_scaling_and_embedding_layernorm_options():
    task = _task()
    model = build("roberta_ext_zero_clap_tiny", task)
    assert model.encoder.sentence_encoder.embed_scale == pytest.approx(64 ** 0.5)
    assert model.encoder.sentence_encoder.layernorm_embedding is None
    baseline = build("roberta_ext_baseline_tiny", task, embed_layernorm=False)
    assert baseline.encoder.sentence_encoder.embed_scale == 1.0
    assert baseline.encoder.sentence_encoder.layernorm_embedding is None
    assert build("roberta_ext_baseline_tiny", task).encoder.sentence_encoder.layernorm_embedding is not None


def test_self_masking_zeroes_inputs_only_in_training():
    task = _task()
    model = build("roberta_ext_zero_clap_tiny", task, self_mask_prob=0.5)
    tokens = _tokens(task, lengths=(12, 12), mask_at=())
    encoder = model.encoder.sentence_encoder
    assert encoder.zeroed_inputs(tokens).sum() == 0
    encoder.train()
    torch.manual_seed(0)
    zeroed = torch.stack([encoder.zeroed_inputs(tokens) for _ in range(50)]).float()
    assert 0.4 < zeroed.mean().item() < 0.6


def _self_masking_validation(self_mask_prob=0.15):
    """A masked_lm_ext --mask-prob 0 task, a zero-clap model, the criterion and a batch whose
    targets are its inputs (16 sentences, some padded)."""
    from fairseq.criterions.masked_lm import MaskedLmConfig, MaskedLmLoss

    task = MaskedLMExtTask(MaskedLMExtConfig(data="unused", omit_mask=True, mask_prob=0.0, seed=3,
                                             tokens_per_sample=32), _dictionary())
    model = build("roberta_ext_zero_clap_tiny", task, self_mask_prob=self_mask_prob)
    tokens = _tokens(task, lengths=[32 - 2 * i for i in range(16)], seq_len=32, mask_at=())
    lengths = tokens.ne(task.source_dictionary.pad()).sum(1)
    sample = {"id": torch.arange(16), "nsentences": 16, "ntokens": int(lengths.sum()),
              "net_input": {"src_tokens": tokens, "src_lengths": lengths}, "target": tokens.clone()}
    return task, model, MaskedLmLoss(MaskedLmConfig(tpu=False), task), sample


def test_self_masking_validation_is_the_denoising_loss():
    """EIFY/fairseq's model also zeroes Bernoulli(p) inputs in eval mode, so its valid loss is
    the denoising loss: masked_lm_ext's valid_step gives that figure, not the copy loss."""
    task, model, criterion, sample = _self_masking_validation()
    tokens = sample["net_input"]["src_tokens"]
    real = tokens.ne(task.source_dictionary.pad())
    loss, sample_size, _ = task.valid_step(sample, model, criterion)

    zeroed = task.self_masked(sample, 0.15)["net_input"]["src_tokens"].eq(task.mask_idx)  # (B, T)
    assert 0.09 < (zeroed.sum() / real.sum()).item() < 0.21 and not bool((zeroed & ~real).any())
    # reference: the fork's input side by hand, normalize(E[x]) * (1 - mask), then the encoder and head
    encoder = model.encoder.sentence_encoder
    inputs = F.normalize(encoder.embed_tokens(tokens), dim=-1) * (~zeroed).unsqueeze(-1).float()
    with torch.no_grad():
        features = encoder(tokens, token_embeddings=inputs)["encoder_out"][0].transpose(0, 1)  # (B, T, C)
        reference = F.cross_entropy(model.encoder.lm_head(features[real]), tokens[real], reduction="sum")
    assert sample_size == real.sum()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-4)
    copy_loss = criterion(model, sample)[0]  # the intact input: what an eval-mode model sees
    assert loss.item() > copy_loss.item() + 1.0  # denoising is harder than copying
    # a fixed draw per sentence: the same loss every validation, the same mask in any batch
    assert task.valid_step(sample, model, criterion)[0].item() == loss.item()
    alone = {**sample, "id": sample["id"][5:6], "net_input": {"src_tokens": tokens[5:6]}}
    assert torch.equal(task.self_masked(alone, 0.15)["net_input"]["src_tokens"][0],
                       task.self_masked(sample, 0.15)["net_input"]["src_tokens"][5])


def test_self_masking_leaves_inference_and_other_models_unmasked():
    task, model, criterion, sample = _self_masking_validation()
    tokens = sample["net_input"]["src_tokens"]
    task.valid_step(sample, model, criterion)
    _, unmasked, _, _ = _self_masking_validation(self_mask_prob=0.0)  # same weights (seed 0)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, features_only=True)[0], unmasked(tokens, features_only=True)[0])
        torch.testing.assert_close(model(tokens)[0], unmasked(tokens)[0])
        # a model that does not self-mask is validated on its input as given
        assert task.valid_step(sample, unmasked, criterion)[0].item() == criterion(unmasked, sample)[0].item()


def test_positions_options():
    task = _task()
    assert build("roberta_ext_alibi_tiny", task).encoder.sentence_encoder.embed_positions is None
    sinusoidal = build("roberta_ext_sinusoidal_tiny", task).encoder.sentence_encoder.embed_positions
    learned = build("roberta_ext_baseline_tiny", task).encoder.sentence_encoder.embed_positions
    assert type(sinusoidal).__name__ == "SinusoidalPositionalEmbedding"
    assert type(learned).__name__ == "LearnedPositionalEmbedding"


def test_stub_era_checkpoint_loads_with_identical_outputs():
    """The stub was stock RoBERTa under this name: its state dict must load unchanged."""
    task = _task()
    args = Namespace(arch="roberta_ext_baseline_tiny", max_positions=32)
    ARCH_CONFIG_REGISTRY["roberta_ext_baseline_tiny"](args)
    torch.manual_seed(0)
    stock = RobertaModel.build_model(args, task).eval()
    state = stock.state_dict()
    assert "version" not in state
    model = build("roberta_ext_baseline_tiny", task)
    model.load_state_dict(state, strict=True, model_cfg=None)
    tokens = _tokens(task)
    real = tokens.ne(task.source_dictionary.pad())
    torch.testing.assert_close(model(tokens, features_only=True)[0][real],
                               stock(tokens, features_only=True)[0][real], atol=1e-5, rtol=1e-5)
    assert model.version.item() == 2


@pytest.mark.parametrize("stored_version", [None, 1])
def test_previous_format_checkpoint_is_recognised_and_upgraded(tmp_path, caplog, stored_version):
    """A state dict saved without the version buffer, or with version 1, is read as version 1,
    upgraded, and gives the saved model's outputs."""
    task = _task()
    saved = build("roberta_ext_zero_clap_tiny", task)
    state = saved.state_dict()
    del state["version"]
    if stored_version is not None:
        state["version"] = torch.tensor([stored_version])
    torch.save({"model": state}, tmp_path / "old.pt")
    torch.manual_seed(1)
    args = Namespace(arch="roberta_ext_zero_clap_tiny", max_positions=32)
    ARCH_CONFIG_REGISTRY["roberta_ext_zero_clap_tiny"](args)
    model = RobertaExtModel.build_model(args, task).eval()  # other random weights
    with caplog.at_level("INFO", logger="fairseq_ext.models.roberta_ext"):
        model.load_state_dict(torch.load(tmp_path / "old.pt")["model"], strict=True, model_cfg=None)
    assert "from format version 1 to 2" in caplog.text
    assert model.version.item() == 2
    tokens = _tokens(task)
    torch.testing.assert_close(model(tokens)[0], saved(tokens)[0])


def test_newer_format_checkpoint_is_refused():
    model = build("roberta_ext_baseline_tiny")
    state = model.state_dict()
    state["version"] = torch.tensor([3])
    with pytest.raises(ValueError, match="format version 3"):
        model.load_state_dict(state, strict=True, model_cfg=None)


@pytest.mark.parametrize("overrides, option", [
    (dict(arch="roberta_ext_alibi_tiny", positions="learned"), "--positions"),
    (dict(arch="roberta_ext_baseline_tiny", positions="rotary"), "--positions"),
    (dict(arch="roberta_ext_baseline_tiny", self_mask_prob=0.15), "--zero-mask"),
    (dict(arch="roberta_ext_zero_clap_tiny", self_mask_prob=1.5), "--self-mask-prob"),
    (dict(arch="roberta_ext_alibi_tiny", alibi_max_positions=8), "--alibi-max-positions"),
    (dict(arch="roberta_ext_baseline_tiny", encoder_attention_heads=3), "--encoder-attention-heads"),
])
def test_bad_configuration_names_the_option(overrides, option):
    arch = overrides.pop("arch")
    with pytest.raises(ValueError, match=option):
        build(arch, **overrides)


def test_input_longer_than_the_limit_is_a_clear_error():
    task = _task()
    model = build("roberta_ext_alibi_tiny", task)
    assert model.max_positions() == 4 * 32
    model(torch.full((1, 100), 5))  # beyond the training length, within the ALiBi limit
    with pytest.raises(ValueError, match="alibi-max-positions"):
        model(torch.full((1, 129), 5))


def test_flops_follow_mask_prob():
    """The head's cost scales with the share of tokens it scores (--mask-prob), except with
    self-masking where every token is a target."""
    from fairseq_ext.flops import model_flops_per_token

    model = build("roberta_ext_baseline_tiny")
    low, high = model_flops_per_token(model, 32, 0.15), model_flops_per_token(model, 32, 0.3)
    assert high > low
    assert model_flops_per_token(model, 32, 0.45) - high == pytest.approx(high - low)
    assert build("roberta_ext_learned_clap_tiny").flops_per_token(32) < low  # no dense head layer


def test_masked_lm_ext_keeps_mask_out_of_the_dictionary():
    task = MaskedLMExtTask(MaskedLMExtConfig(data="unused", omit_mask=True), _dictionary())
    d = task.source_dictionary
    assert isinstance(d, OutOfVocabMaskDictionary) and "<mask>" not in d
    assert task.mask_idx == len(d) == len(VOCAB) + 4
    line = d.encode_line("<s> w1 <mask> w2 </s>", append_eos=False, add_if_not_exist=False)
    assert line.tolist() == [d.bos(), d.index("w1"), len(d), d.index("w2"), d.eos()]
    assert d[len(d)] == "<mask>"
    model = build("roberta_ext_zero_clap_tiny", task)
    assert model.encoder.sentence_encoder.embed_tokens.num_embeddings == len(d)


def test_masked_lm_ext_rejects_a_dictionary_with_mask():
    d = _dictionary()
    d.add_symbol("<mask>")
    with pytest.raises(ValueError, match="omit-mask"):
        MaskedLMExtTask(MaskedLMExtConfig(data="unused", omit_mask=True), d)


def _parse(*argv):
    from fairseq import options

    parser = options.get_training_parser()
    return options.parse_args_and_arch(parser, input_args=["unused", "--task", "masked_lm", *argv])


def test_command_line_switches_every_boolean_both_ways():
    args = _parse("--arch", "roberta_ext_learned_clap_tiny", "--l2norm-embedding", "false",
                  "--embed-layernorm", "True", "--positions", "sinusoidal")
    ARCH_CONFIG_REGISTRY[args.arch](args)
    assert args.clap_head and not args.l2norm_embedding and args.layernorm_embedding
    assert args.positions == "sinusoidal" and not args.encoder_learned_pos
    args = _parse("--arch", "roberta_ext_baseline_tiny", "--clap-head", "1")
    ARCH_CONFIG_REGISTRY[args.arch](args)
    assert args.clap_head and args.l2norm_embedding  # follows --clap-head by default
    with pytest.raises(SystemExit):
        _parse("--arch", "roberta_ext_baseline_tiny", "--clap-head", "maybe")


def test_encoder_layers_to_keep_prunes_a_checkpoint_as_stock_roberta():
    """--encoder-layers-to-keep 0,2 at load time (from_pretrained(..., encoder_layers_to_keep=
    "0,2") passes model_cfg on): layers 0 and 2 of a 3-layer checkpoint, as stock RoBERTa."""
    task = _task()
    full = build("roberta_ext_baseline_tiny", task, encoder_layers=3)
    pruned = build("roberta_ext_baseline_tiny", task, encoder_layers=3, encoder_layers_to_keep="0,2")
    assert len(pruned.encoder.sentence_encoder.layers) == 2
    pruned.load_state_dict(full.state_dict(), strict=True, model_cfg=pruned.args)
    layers = full.encoder.sentence_encoder.layers
    full.encoder.sentence_encoder.layers = torch.nn.ModuleList([layers[0], layers[2]])
    tokens = _tokens(task)
    real = tokens.ne(task.source_dictionary.pad())
    torch.testing.assert_close(pruned(tokens, features_only=True)[0][real],
                               full(tokens, features_only=True)[0][real], atol=1e-5, rtol=1e-5)


def test_a_model_trained_with_encoder_layers_to_keep_reloads_unpruned():
    """Trained with --encoder-layers-to-keep 0,2 the checkpoint holds 2 layers and its config
    still names 0,2: stock pruning would drop its layer 1; it loads as it is."""
    task = _task()
    trained = build("roberta_ext_baseline_tiny", task, encoder_layers=3, encoder_layers_to_keep="0,2")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    reloaded = build("roberta_ext_baseline_tiny", task, encoder_layers=3, encoder_layers_to_keep="0,2")
    reloaded.load_state_dict(trained.state_dict(), strict=True, model_cfg=reloaded.args)
    for name, value in trained.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name
