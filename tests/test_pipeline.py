"""End to end through stock fairseq: train, resume, hydra, reload, fill_mask in a fresh process."""
import subprocess

import pytest
import torch

from helpers import REPO, USER_DIR, json_log_records, run_fairseq, run_python, set_arg, subprocess_env, tiny_train_args


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A tiny roberta_ext model trained for 30 updates; (save_dir, fairseq's stdout)."""
    save = tmp_path_factory.mktemp("ckpt")
    proc = run_fairseq(tiny_train_args(tiny_data, save, updates=30))
    return save, proc.stdout + proc.stderr


def test_train_loss_goes_down(trained):
    losses = [float(r["loss"]) for r in json_log_records(trained[1])]
    assert len(losses) >= 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0
    assert (trained[0] / "checkpoint_last.pt").is_file()


FILL_MASK = """
from fairseq.models.roberta import RobertaModel
lm = RobertaModel.from_pretrained({save!r}, "checkpoint_last.pt", {data!r}, bpe="sentencepiece",
                                  sentencepiece_model={spm!r}{extra})
answers = lm.fill_mask("The game was played in the <mask> of the season .", topk=7)
assert len(answers) == 7, answers
print("OK", answers[0])
"""


@pytest.mark.parametrize("how", ["import", "user_dir"])
def test_from_pretrained_fill_mask_in_a_fresh_process(trained, tiny_data, how):
    code = FILL_MASK.format(save=str(trained[0]), data=str(tiny_data), spm=str(tiny_data / "sentencepiece.bpe.model"),
                            extra=f", user_dir={USER_DIR!r}" if how == "user_dir" else "")
    if how == "import":
        code = "import fairseq_ext\n" + code
    assert "OK" in run_python(code, cwd=REPO.parent).stdout


def test_hub_fill_mask_answers_are_clean_words(trained, tiny_data):
    from fairseq_ext import hub

    lm = hub.from_pretrained(trained[0], "checkpoint_last.pt", tiny_data)
    sentence = "The game was played in the <mask>."
    answers = lm.fill_mask(sentence, topk=10)
    assert len(answers) == 10
    for filled, prob, word in answers:
        assert word and word == word.strip() and "\u2581" not in word and "<" not in word
        assert filled == sentence.replace("<mask>", word) and 0 < prob < 1
    probs = [p for _, p, _ in answers]
    assert probs == sorted(probs, reverse=True)
    # text glued after the mask continues it: "." is not encoded as a new word "▁."
    tokens, position, word_start = lm.fill_mask_tokens(sentence)
    assert word_start and lm.task.source_dictionary[tokens[position + 1]] == "."
    # a mask glued to a word asks for a continuation piece
    glued = lm.fill_mask("The play<mask> was long .", topk=3)
    assert all(filled.startswith("The play" + word + " ") for filled, _, word in glued)
    with pytest.raises(ValueError, match="exactly one <mask>"):
        lm.fill_mask("no mask here")


def test_checkpoint_reloads_to_identical_outputs(trained, tiny_data):
    from fairseq_ext import hub

    a = hub.from_pretrained(trained[0], "checkpoint_last.pt", tiny_data)
    b = hub.from_pretrained(trained[0], "checkpoint_last.pt", tiny_data)
    tokens = a.encode("The game was played in the rain .")
    assert torch.equal(a.extract_features(tokens), b.extract_features(tokens))


def test_resumed_run_matches_uninterrupted_run(tiny_data, tmp_path):
    straight = tiny_train_args(tiny_data, tmp_path / "straight", updates=8)
    run_fairseq(straight)
    resumed = tiny_train_args(tiny_data, tmp_path / "resumed", updates=4)
    run_fairseq(resumed)
    run_fairseq(set_arg(resumed, "--max-update", 8))
    a = torch.load(tmp_path / "straight" / "checkpoint_last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoint_last.pt", weights_only=False)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_hydra_train_from_yaml(tiny_data, tmp_path):
    proc = run_fairseq(["fairseq-hydra-train", "--config-dir", REPO / "hydra_configs" / "quickstart",
                        "--config-name", "small", f"task.data={tiny_data}", f"common.user_dir={USER_DIR}",
                        "model._name=roberta_ext_zero_clap_tiny", "task.tokens_per_sample=64",
                        "optimization.max_update=4", f"checkpoint.save_dir={tmp_path / 'ckpt'}"], cwd=tmp_path)
    assert "done training" in proc.stdout + proc.stderr
    assert (tmp_path / "ckpt" / "checkpoint_last.pt").is_file()


def test_quickstart_script_end_to_end(tmp_path):
    """README command 1 at tiny size: prepare the bundled sample, train, fill masks."""
    env = subprocess_env({"QUICKSTART_UPDATES": "6", "QUICKSTART_DATA": str(tmp_path / "data"),
                          "QUICKSTART_SAVE": str(tmp_path / "ckpt")})
    proc = subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh")], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "num_updates 6" in proc.stdout + proc.stderr
    assert proc.stdout.count("The man walked into the ") >= 6  # the sentence and its 5 answers
