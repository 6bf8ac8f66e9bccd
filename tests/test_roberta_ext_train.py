"""roberta_ext end to end, in real fairseq processes: fairseq-train for every variant,
fairseq-hydra-train from a yaml, reload, from_pretrained + fill_mask, longer inputs for ALiBi,
and stock sentence_prediction fine-tuning from each checkpoint."""

import pytest
import torch
from fairseq.models.roberta import RobertaModel
from helpers import (REPO, USER_DIR, assert_finetuned, finetune_args, json_log_records, run_fairseq, run_python,
                     tiny_train_args)

from fairseq_ext.models.roberta_ext import VARIANTS

TRAIN_LEN = 64
# The tiny data's long lines would be skipped with --sample-break-mode complete.
COMMON = ["--sample-break-mode", "none", "--tokens-per-sample", str(TRAIN_LEN)]
ZERO_CLAP_EXT = "zero_clap_masked_lm_ext"  # zero-clap trained with task masked_lm_ext --omit-mask
SELF_MASKING = "zero_clap_self_masking"  # ... and --mask-prob 0 --self-mask-prob 0.15
SELF_MASKING_TASK = ("--task", "masked_lm_ext", "--omit-mask", "--mask-prob", "0")


def _train(data, save_dir, arch, extra=()):
    proc = run_fairseq(tiny_train_args(data, save_dir, arch=arch, updates=20, extra=[*COMMON, *extra]))
    return json_log_records(proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """{name: (save_dir, train_inner records)} for the five variants, zero-clap/masked_lm_ext
    and zero-clap self-masking."""
    root = tmp_path_factory.mktemp("roberta_ext")
    runs = {v: (f"roberta_ext_{v}_tiny", ()) for v in VARIANTS}
    runs[ZERO_CLAP_EXT] = ("roberta_ext_zero_clap_tiny", ("--task", "masked_lm_ext", "--omit-mask"))
    runs[SELF_MASKING] = ("roberta_ext_zero_clap_tiny", (*SELF_MASKING_TASK, "--self-mask-prob", "0.15"))
    return {name: (root / name, _train(tiny_data, root / name, arch, extra)) for name, (arch, extra) in runs.items()}


def _load(save_dir, data, **overrides):
    hub = RobertaModel.from_pretrained(str(save_dir), "checkpoint_last.pt", str(data), bpe="sentencepiece",
                                       sentencepiece_model=str(data / "sentencepiece.bpe.model"),
                                       user_dir=USER_DIR, **overrides)
    return hub.eval()


@pytest.mark.parametrize("name", [*VARIANTS, ZERO_CLAP_EXT, SELF_MASKING])
def test_training_lowers_the_loss(trained, name):
    records = trained[name][1]
    assert len(records) >= 5
    assert float(records[-1]["loss"]) < float(records[0]["loss"]) - 0.3


@pytest.mark.parametrize("name", [*VARIANTS, ZERO_CLAP_EXT])
def test_fill_mask_gives_k_answers(trained, tiny_data, name):
    hub = _load(trained[name][0], tiny_data)
    answers = hub.fill_mask("The game was released in <mask> .", topk=3)
    assert len(answers) == 3
    assert sorted((a[1] for a in answers), reverse=True) == [a[1] for a in answers]


@pytest.mark.parametrize("name", ["zero_clap", ZERO_CLAP_EXT, SELF_MASKING])
def test_zero_clap_fill_mask_feeds_the_zero_mask_id(trained, tiny_data, name):
    """The literal <mask> reaches the model as the vocabulary size, an exact zero input, and
    nothing else is zeroed (a self-masking model masks in training and validation only)."""
    hub = _load(trained[name][0], tiny_data)
    encoder = hub.model.encoder.sentence_encoder
    vocab = encoder.embed_tokens.num_embeddings
    assert hub.task.mask_idx == vocab
    tokens = hub.task.source_dictionary.encode_line("<s> ▁The <mask> ▁game </s>", append_eos=False,
                                                    add_if_not_exist=False).long()[None]
    assert tokens[0, 2] == vocab
    _, embed = encoder.forward_embedding(tokens)
    assert torch.count_nonzero(embed[0, 2]) == 0 and bool((embed[0, [0, 1, 3, 4]].norm(dim=-1) > 0).all())
    logits = hub.model(tokens)[0][0, 2]
    best = hub.fill_mask("The <mask> game", topk=1)[0]
    assert best[1] == pytest.approx(logits.softmax(-1).max().item(), rel=1e-5)


@pytest.mark.parametrize("name", ["alibi", "zero_clap"])
def test_alibi_models_run_inputs_longer_than_the_training_length(trained, tiny_data, name):
    hub = _load(trained[name][0], tiny_data)
    tokens = hub.encode(" ".join(["The game was released in Japan ."] * 20))
    assert TRAIN_LEN < tokens.numel() <= hub.model.max_positions() == 4 * TRAIN_LEN
    assert hub.extract_features(tokens).shape == (1, tokens.numel(), 64)
    long_sentence = " ".join(["The game was released in Japan ."] * 15) + " It was <mask> ."
    assert len(hub.fill_mask(long_sentence, topk=2)) == 2
    raised = _load(trained[name][0], tiny_data, alibi_max_positions=8 * TRAIN_LEN)
    assert raised.model.max_positions() == 8 * TRAIN_LEN


def test_learned_positions_refuse_longer_inputs(trained, tiny_data):
    hub = _load(trained["baseline"][0], tiny_data)
    with pytest.raises(ValueError, match="maximum length"):
        hub.extract_features(hub.encode(" ".join(["The game was released ."] * 20)))


@pytest.mark.parametrize("name", ["alibi", ZERO_CLAP_EXT, SELF_MASKING])
def test_reloaded_checkpoint_reproduces_the_validation_loss(trained, tiny_data, name):
    """fairseq-validate gives the loss validation gave in training; for self-masking that is the
    denoising loss on the same fixed masks (masked_lm_ext's valid_step)."""
    save_dir, _ = trained[name]
    task = {ZERO_CLAP_EXT: ["--task", "masked_lm_ext", "--omit-mask"], SELF_MASKING: list(SELF_MASKING_TASK)
            }.get(name, ["--task", "masked_lm"])
    proc = run_fairseq(["fairseq-validate", tiny_data, "--path", save_dir / "checkpoint_last.pt",
                        "--user-dir", USER_DIR, *task, "--criterion", "masked_lm", *COMMON, "--seed", "1",
                        "--cpu", "--num-workers", "0", "--batch-size", "16", "--log-format", "json"])
    validated = json_log_records(proc.stdout + proc.stderr, prefix="valid")
    assert validated, proc.stdout[-2000:] + proc.stderr[-2000:]
    state = torch.load(save_dir / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert float(validated[0]["valid_loss"]) == pytest.approx(state["extra_state"]["val_loss"], abs=2e-3)


@pytest.mark.parametrize("recipe, schedule", [
    ("zero_clap", "lr_scheduler.lr_period_updates=40"),  # cosine (the Pile recipes)
    ("zero_clap_self_masking", "lr_scheduler.total_num_update=40"),  # polynomial decay (WikiText-103)
])
def test_hydra_yaml_trains_end_to_end(tiny_data, tmp_path, recipe, schedule):
    proc = run_fairseq([
        "fairseq-hydra-train", "--config-dir", REPO / "hydra_configs" / "roberta_ext", "--config-name", recipe,
        f"task.data={tiny_data}", f"common.user_dir={USER_DIR}", "model._name=roberta_ext_zero_clap_tiny",
        f"model.max_positions={TRAIN_LEN}", f"task.tokens_per_sample={TRAIN_LEN}",
        "dataset.batch_size=16", "dataset.num_workers=0", "optimization.update_freq=[1]",
        "optimization.max_update=20", "optimization.lr=[0.001]", "lr_scheduler.warmup_updates=5",
        schedule, "common.cpu=true", "common.log_interval=2",
        f"checkpoint.save_dir={tmp_path}"], cwd=tmp_path)  # hydra writes outputs/ into cwd
    # hydra logs "[time][train_inner][INFO] - {...}": take every JSON record with a "loss"
    losses = [float(r["loss"]) for r in json_log_records(proc.stdout + proc.stderr, prefix="*") if "loss" in r]
    assert len(losses) >= 5 and losses[-1] < losses[0] - 0.3
    assert (tmp_path / "checkpoint_last.pt").exists()
    # without the plugin, the recipe's task masked_lm_ext is what fails first (README)
    assert_readme_quotes(error_without_plugin(tmp_path, tiny_data),
                         "AssertionError: Could not infer task type from {'_name': 'masked_lm_ext'")


def test_mask_prob_zero_makes_every_token_a_target(tiny_data):
    """masked_lm_ext --mask-prob 0 (self-masking): inputs intact, targets are the inputs."""
    from fairseq_ext.tasks.masked_lm_ext import MaskedLMExtConfig, MaskedLMExtTask

    cfg = MaskedLMExtConfig(data=str(tiny_data), mask_prob=0.0, omit_mask=True, seed=1,
                            tokens_per_sample=TRAIN_LEN, sample_break_mode="none")
    task = MaskedLMExtTask.setup_task(cfg)
    task.load_dataset("valid")
    batch = task.dataset("valid").collater([task.dataset("valid")[i] for i in range(4)])
    tokens, target = batch["net_input"]["src_tokens"], batch["target"]
    assert torch.equal(tokens, target) and not bool(tokens.eq(task.mask_idx).any())


@pytest.mark.parametrize("name", [*VARIANTS, ZERO_CLAP_EXT])
def test_sentence_prediction_finetunes_from_each_checkpoint(trained, classification_data, tmp_path, name):
    save_dir, _ = trained[name]
    assert_finetuned(run_fairseq(finetune_args(classification_data, trained_arch(name), save_dir / "checkpoint_last.pt",
                                               tmp_path, updates=10, extra=["--max-positions", str(TRAIN_LEN)])))


def trained_arch(name):
    return "roberta_ext_zero_clap_tiny" if name == ZERO_CLAP_EXT else f"roberta_ext_{name}_tiny"


def test_omit_mask_without_zero_mask_is_refused_at_build_time(tiny_data, tmp_path):
    """--omit-mask gives <mask> the id len(dict); a model without --zero-mask has no such row."""
    argv = tiny_train_args(tiny_data, tmp_path, arch="roberta_ext_baseline_tiny", updates=2)
    argv[argv.index("masked_lm")] = "masked_lm_ext"  # the --task value (the criterion stays)
    with pytest.raises(AssertionError) as failed:
        run_fairseq(argv + ["--omit-mask"])
    output = str(failed.value)
    assert "--omit-mask keeps <mask> out of the dictionary, so it needs a model with --zero-mask true" in output
    assert "roberta_ext_baseline_tiny has no zero mask" in output
    assert "train_inner" not in output and "IndexError" not in output


def test_hydra_recipe_validates_at_a_short_tokens_per_sample(tiny_data, tmp_path):
    """The recipe's own break mode at tokens_per_sample 64 (wikitext lines are longer): every
    train and valid sample fits the model (none is one token too long once <s> is prepended)."""
    proc = run_fairseq([
        "fairseq-hydra-train", "--config-dir", REPO / "hydra_configs" / "roberta_ext", "--config-name", "baseline",
        f"task.data={tiny_data}", f"common.user_dir={USER_DIR}", "model._name=roberta_ext_baseline_tiny",
        f"model.max_positions={TRAIN_LEN}", f"task.tokens_per_sample={TRAIN_LEN}", "model.bf16_autocast=false",
        "dataset.batch_size=16", "dataset.num_workers=0", "optimization.update_freq=[1]",
        "optimization.max_update=2", "lr_scheduler.warmup_updates=1", "lr_scheduler.lr_period_updates=4",
        "dataset.validate_interval_updates=2", "common.cpu=true", "common.log_interval=1",
        f"checkpoint.save_dir={tmp_path}"], cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert json_log_records(output, prefix="*") and "valid_loss" in output
    assert "skipped" not in output  # fairseq drops over-long training samples with a warning
    # a hydra-trained checkpoint of a stock task, loaded without the plugin (README)
    assert_readme_quotes(error_without_plugin(tmp_path, tiny_data), "KeyError: \"'_name'\"")


def test_argparse_checkpoint_without_the_plugin_fails_as_the_readme_says(trained, tiny_data):
    save_dir, _ = trained["baseline"]
    assert_readme_quotes(error_without_plugin(save_dir, tiny_data), "_pickle.UnpicklingError: Weights only load failed.",
                         "Unsupported global: GLOBAL argparse.Namespace was not an allowed global by default")
    assert_readme_quotes(error_without_plugin(save_dir, tiny_data, allowlist_namespace=True),
                         "IndexError: Replacement index 1 out of range for positional args tuple")


def error_without_plugin(save_dir, data, allowlist_namespace=False) -> str:
    """The exception (whitespace collapsed) a fresh Python without fairseq_ext gets from
    ``RobertaModel.from_pretrained``; optionally after allowlisting argparse.Namespace."""
    allowlist = "import argparse, torch\ntorch.serialization.add_safe_globals([argparse.Namespace])\n"
    code = ((allowlist if allowlist_namespace else "") + "import traceback\nfrom fairseq.models.roberta import RobertaModel\n"
            f"try:\n    RobertaModel.from_pretrained({str(save_dir)!r}, 'checkpoint_last.pt', {str(data)!r})\n"
            "except Exception as error:\n    print('LOAD FAILED', ''.join(traceback.format_exception_only(error)))\n")
    output = run_python(code).stdout
    assert "LOAD FAILED" in output, "the checkpoint loaded without the plugin"
    return " ".join(output.split("LOAD FAILED", 1)[1].split())


def assert_readme_quotes(error: str, *quotes: str):
    """Each quote is in the real error and in the README's loading warning (line breaks and
    '> ' quote markers ignored)."""
    readme = " ".join(" ".join(line.lstrip("> ") for line in (REPO / "README.md").read_text().splitlines()).split())
    for quote in quotes:
        assert quote in error, f"the loading error changed: {error[:600]}"
        assert quote in readme, f"README does not quote the loading error {quote!r}"
