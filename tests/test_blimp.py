"""BLiMP pseudo-log-likelihood evaluation on a tiny trained checkpoint: the command's JSON
(accuracies in [0, 1], pair counts per paradigm/field), batched PLL = one-at-a-time PLL, and
that it works for a stock RoBERTa too."""
import json

import pytest

from helpers import USER_DIR, run_fairseq, run_python, tiny_train_args


@pytest.fixture(scope="module")
def checkpoints(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("blimp_ck")
    run_fairseq(tiny_train_args(tiny_data, root / "elc", arch="elc_bert_weighted_output_tiny", updates=8))
    run_fairseq(tiny_train_args(tiny_data, root / "roberta", arch="roberta_base", updates=2,
                                extra=["--encoder-layers", "1", "--encoder-embed-dim", "32",
                                       "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2"]))
    return root


@pytest.mark.parametrize("model", ["elc", "roberta"])
def test_command_writes_accuracies_and_counts(checkpoints, tiny_data, blimp_sample, tmp_path, model):
    out = tmp_path / "results.json"
    code = f"""
from fairseq_ext.eval import blimp
blimp.main(["--checkpoint-dir", {str(checkpoints / model)!r}, "--checkpoint", "checkpoint_last.pt",
            "--data-dir", {str(tiny_data)!r}, "--blimp", {str(blimp_sample)!r}, "--out", {str(out)!r},
            "--user-dir", {USER_DIR!r}, "--max-tokens", "300"])
"""
    stdout = run_python(code).stdout
    result = json.loads(out.read_text())
    assert result["overall"]["pairs"] == 6 and "overall" in stdout
    assert {k: v["pairs"] for k, v in result["paradigms"].items()} == {"adjunct_island": 3, "irregular_past_participle_verbs": 3}
    assert {k: v["pairs"] for k, v in result["fields"].items()} == {"syntax": 3, "morphology": 3}
    for r in [result["overall"], *result["fields"].values(), *result["paradigms"].values()]:
        assert 0.0 <= r["accuracy"] <= 1.0 and (r["accuracy"] * r["pairs"]).is_integer()


def test_batched_pll_equals_one_at_a_time(checkpoints, tiny_data):
    code = f"""
from fairseq_ext import hub
from fairseq_ext.eval import blimp
lm = hub.from_pretrained({str(checkpoints / 'elc')!r}, "checkpoint_last.pt", {str(tiny_data)!r})
sentences = ["Who should Derek hug after shocking Richard?", "The cat sat.", "A much longer sentence with several more words in it than the others."]
batched = blimp.pseudo_log_likelihoods(lm, sentences, max_tokens=200)  # several forwards, padded rows
reference = [blimp.pseudo_log_likelihood_reference(lm, s) for s in sentences]
assert all(abs(a - b) < 1e-3 for a, b in zip(batched, reference)), (batched, reference)
assert all(x < 0 for x in batched)
print("OK")
"""
    assert "OK" in run_python(code).stdout


def test_both_spellings_of_syntax_semantics_are_one_field():
    """BLiMP's data spells one field ``syntax/semantics`` and ``syntax_semantics``."""
    from fairseq_ext.eval import blimp

    pairs = [{"UID": "a", "field": "syntax/semantics"}, {"UID": "b", "field": "syntax_semantics"},
             {"UID": "c", "field": "syntax"}]
    result = blimp.accuracies(pairs, good=[1.0, 0.0, 1.0], bad=[0.0, 1.0, 0.0])
    assert result["fields"] == {"syntax": {"accuracy": 1.0, "pairs": 1},
                                "syntax_semantics": {"accuracy": 0.5, "pairs": 2}}
