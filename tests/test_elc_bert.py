"""ELC-BERT / LTG-BERT: fast paths against references, the variants' initial weights, the
recipe's pieces (span masking, LAMB, schedule, length switch) and real fairseq runs."""
import math

import numpy as np
import pytest
import torch

from helpers import REPO, USER_DIR, json_log_records, run_fairseq, tiny_train_args
from fairseq_ext.data.span_masking import span_mask
from fairseq_ext.models.elc_bert import VARIANTS
from fairseq_ext.modules.layer_mixing import LayerWeights, initial_layer_weights, mix, mix_reference
from fairseq_ext.modules.relative_attention import DisentangledSelfAttention, log_bucket, relative_index
from fairseq_ext.optim.cosine_floor import cosine_floor_factor
from fairseq_ext.optim.lamb_elc import LambElc, decay_groups
from test_glom import build


def test_mixing_fast_path_matches_loop():
    states = [torch.randn(2, 3, 4) for _ in range(5)]
    weights = torch.randn(5)
    torch.testing.assert_close(mix(weights, states), mix_reference(weights, states))


def test_initial_layer_weights_per_variant():
    base = torch.softmax(initial_layer_weights(11, "base"), 0)
    assert base[-1] == pytest.approx(math.e / (11 + math.e)) and base[-1] == pytest.approx(0.198, abs=1e-3)
    assert torch.equal(initial_layer_weights(3, "zero"), torch.zeros(4))
    assert [len(w) for w in LayerWeights(3, "normalized").weights] == [1, 2, 3]


def test_log_buckets():
    offsets = torch.tensor([0, 5, 16, -16, 17, 100, 511, 5000, -5000])
    buckets = log_bucket(offsets, 32, 512).tolist()
    assert buckets[:4] == [0, 5, 16, -16] and 17 <= buckets[4] <= buckets[5] <= buckets[6] == 31
    assert buckets[7] == 31 and buckets[8] == -31
    index = relative_index(6, 32, 512)
    assert index[2, 2] == 31 and index[0, 5] == 31 - 5 and index[5, 0] == 31 + 5


def test_disentangled_attention_sdpa_matches_explicit_softmax():
    torch.manual_seed(0)
    attention = DisentangledSelfAttention(16, 2, 0.0, 0.0).eval()
    x, positions = torch.randn(3, 9, 16), torch.randn(63, 16)
    padding = torch.zeros(3, 9, dtype=torch.bool)
    padding[0, 6:] = True
    index = relative_index(9, 32, 512)
    for mask in (None, padding):
        torch.testing.assert_close(attention(x, positions, index, mask), attention(x, positions, index, mask, reference=True))


@pytest.mark.parametrize("variant", VARIANTS)
def test_encoder_fast_path_matches_reference(tiny_data, variant):
    model, _ = build(tiny_data, "elc_bert_zero_tiny", "--elc-variant", variant)
    model.eval()
    encoder = model.encoder.sentence_encoder
    for w in encoder.parameters():
        w.data.add_(0.1 * torch.randn_like(w))  # non-uniform layer weights
    tokens = torch.tensor([[0, 10, 11, 12, 13, 2], [0, 20, 21, 2, 1, 1]])
    fast = encoder(tokens)["encoder_out"][0]
    torch.testing.assert_close(fast, encoder(tokens, reference=True)["encoder_out"][0], atol=1e-5, rtol=1e-5)


def test_unknown_variant_is_a_build_error(tiny_data):
    with pytest.raises(ValueError, match="--elc-variant must be one of"):
        build(tiny_data, "elc_bert_zero_tiny", "--elc-variant", "mean")


def test_span_masking_budget_spans_and_specials():
    rng = np.random.default_rng(0)
    tokens = np.r_[0, np.arange(10, 210), 2]
    maskable = tokens >= 4
    kinds = np.stack([span_mask(tokens, maskable, rng, 0.15, 0.1, 0.1, 1 / 3, 10) for _ in range(300)])
    selected = kinds > 0
    assert not selected[:, [0, -1]].any()  # <s> and </s> never
    assert 0.13 < selected.mean() * len(tokens) / maskable.sum() < 0.2  # about mask_p, overshoot of the last span
    kind_shares = [(kinds == k).sum() / selected.sum() for k in (1, 2, 3)]
    assert 0.7 < kind_shares[0] < 0.9 and 0.05 < kind_shares[1] < 0.15 and 0.05 < kind_shares[2] < 0.15
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, selected[0].astype(int), 0])))[::2]
    assert runs.max() > 1  # spans, not single tokens


def test_lamb_trust_ratio_only_where_weight_decay_applies():
    decayed, plain = torch.nn.Parameter(torch.full((4,), 2.0)), torch.nn.Parameter(torch.full((4,), 2.0))
    plain.no_weight_decay = True
    groups = decay_groups([decayed, plain], 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    opt = LambElc(groups, lr=0.01)
    decayed.grad, plain.grad = torch.full((4,), 1e-3), torch.full((4,), 1e-3)
    opt.step()
    assert torch.allclose(plain, torch.full((4,), 2.0 - 0.01), atol=1e-6)  # plain Adam: a step of lr
    update = 1.0 + 0.1 * 2.0  # Adam's u (1 at the first step) plus wd * theta
    assert torch.allclose(decayed, torch.full((4,), 2.0 - 0.01 * (2.0 / update) * update), atol=1e-6)


def test_cosine_schedule_warmup_and_floor():
    assert cosine_floor_factor(0, 1000, 16, 0.1) == 0 and cosine_floor_factor(8, 1000, 16, 0.1) == 0.5
    assert cosine_floor_factor(16, 1000, 16, 0.1) == pytest.approx(1.0)
    assert cosine_floor_factor(508, 1000, 16, 0.1) == pytest.approx(0.55)
    assert cosine_floor_factor(1000, 1000, 16, 0.1) == pytest.approx(0.1)


def test_no_decay_marks_follow_the_original_names(tiny_data):
    model, _ = build(tiny_data, "elc_bert_weighted_output_tiny")
    marked = {n for n, p in model.named_parameters() if p.no_weight_decay}
    assert "encoder.sentence_encoder.embed_tokens.weight" in marked
    assert any("layer_weights" in n for n in marked) and "encoder.sentence_encoder.output_weights" in marked
    assert "encoder.sentence_encoder.layers.0.attention.in_proj_qk.weight" not in marked


def test_recipe_trains_and_switches_to_long_sequences(tiny_data, tmp_path):
    args = tiny_train_args(tiny_data, tmp_path, arch="elc_bert_zero_tiny", updates=60, extra=[
        "--task", "elc_span_masked_lm", "--criterion", "masked_lm_label_smoothed", "--label-smoothing", "0.1",
        "--optimizer", "lamb_elc", "--lr", "1e-2", "--lr-scheduler", "cosine_floor", "--tokens-per-sample", "16",
        "--batch-size", "64", "--train-subset", "valid", "--long-after", "0.5", "--disable-validation"])
    warmup = args.index("--warmup-updates")  # inverse_sqrt's option; cosine_floor warms up by fraction
    del args[warmup:warmup + 2]
    records = json_log_records(run_fairseq(args).stdout)
    short = [r for r in records if int(r["num_updates"]) <= 30]
    long = records[-3:]  # the switch waits for the epoch boundary after update 30 (epochs of ~26 updates)
    # full batches (an epoch's last one is smaller): a quarter of the sentences, the same tokens
    assert max(int(r["bsz"]) for r in short) == 64 and max(int(r["bsz"]) for r in long) == 16
    # (wpb averages 2 updates, and short_p shortens 10% of the training sequences)
    long_tokens, short_tokens = max(float(r["wpb"]) for r in long), max(float(r["wpb"]) for r in short)
    assert 0.9 * 64 * 16 < long_tokens <= 64 * 16 and 0.9 * 64 * 16 < short_tokens <= 64 * 16
    assert float(records[-1]["loss"]) < float(records[0]["loss"]) - 1.0


def test_from_pretrained_fill_mask_and_blimp(tiny_data, tmp_path):
    run_fairseq(tiny_train_args(tiny_data, tmp_path, arch="elc_bert_weighted_output_tiny", updates=10))
    from fairseq_ext import hub
    from fairseq_ext.eval import blimp

    lm = hub.from_pretrained(tmp_path, "checkpoint_last.pt", tiny_data)
    assert len(lm.fill_mask("The game was played in the <mask> .", topk=3)) == 3
    sentences = ["The cat sat on the mat .", "A man walked .", "They were playing in the park near the river ."]
    batched = blimp.pseudo_log_likelihoods(lm, sentences, max_rows=8)
    one_by_one = [blimp.pseudo_log_likelihood_reference(lm, s) for s in sentences]
    assert batched == pytest.approx(one_by_one, abs=1e-3)
    sample = tmp_path / "blimp"
    sample.mkdir()
    lines = (REPO.parent / "shared/data/blimp-dev/adjunct_island.jsonl").read_text().splitlines()[:5]
    (sample / "adjunct_island.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "blimp.json"
    blimp.main(["--checkpoint-dir", str(tmp_path), "--checkpoint", "checkpoint_last.pt", "--data-dir", str(tiny_data),
                "--blimp", str(sample), "--out", str(out)])
    import json

    result = json.loads(out.read_text())
    assert result["overall"]["pairs"] == 5 and 0 <= result["overall"]["accuracy"] <= 1
    assert result["fields"]["syntax"]["pairs"] == 5


def test_hydra_recipe_runs(tiny_data, tmp_path):
    proc = run_fairseq([
        "fairseq-hydra-train", "--config-dir", REPO / "hydra_configs" / "elc_bert", "--config-name", "elc_bert_zero_small",
        f"task.data={tiny_data}", f"common.user_dir={USER_DIR}", "model._name=elc_bert_normalized_tiny",
        "task.tokens_per_sample=32", "dataset.batch_size=8", "dataset.num_workers=0", "optimization.max_update=4",
        "common.cpu=true", f"checkpoint.save_dir={tmp_path}"], cwd=tmp_path)
    assert "done training" in proc.stdout + proc.stderr
