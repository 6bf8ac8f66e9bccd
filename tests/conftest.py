import re
from pathlib import Path

import pytest

from helpers import SHARED_DATA, run_fairseq


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory) -> Path:
    """A small raw corpus from WikiText-2: train.txt (~300 KB) and valid.txt (~50 KB)."""
    root = tmp_path_factory.mktemp("text")
    wiki = SHARED_DATA / "wikitext-2"
    (root / "train.txt").write_bytes((wiki / "wiki.valid.tokens").read_bytes()[:300_000])
    (root / "valid.txt").write_bytes((wiki / "wiki.test.tokens").read_bytes()[-50_000:])
    return root


@pytest.fixture(scope="session")
def tiny_data(tiny_text, tmp_path_factory) -> Path:
    """``tiny_text`` prepared by fairseq_ext.data.prepare (sentencepiece vocab 1000)."""
    from fairseq_ext.data import prepare

    out = tmp_path_factory.mktemp("data-bin") / "tiny"
    prepare.main(["--train", str(tiny_text / "train.txt"), "--valid", str(tiny_text / "valid.txt"),
                  "--out", str(out), "--vocab-size", "1000", "--workers", "1"])
    return out


@pytest.fixture(scope="session")
def classification_data(tiny_data, tiny_text, tmp_path_factory):
    """A tiny GLUE-style binary task (input0/, label/): does the sentence mention a year?"""
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("cls")
    sp = spm.SentencePieceProcessor(model_file=str(tiny_data / "sentencepiece.bpe.model"))
    text = (tiny_text / "train.txt").read_text()
    raw = [s.strip() for s in text.split(" . ") if 5 < len(s.split()) < 30][:400]
    for split, part in (("train", raw[:320]), ("valid", raw[320:])):
        (root / f"{split}.input0").write_text("\n".join(" ".join(sp.encode(s, out_type=str)) for s in part) + "\n")
        (root / f"{split}.label").write_text("\n".join(str(int(bool(re.search(r"\b1[89]\d\d\b", s)))) for s in part) + "\n")
    for field in ("input0", "label"):
        extra = ["--srcdict", tiny_data / "dict.txt"] if field == "input0" else []
        run_fairseq(["fairseq-preprocess", "--only-source", "--trainpref", root / f"train.{field}",
                     "--validpref", root / f"valid.{field}", "--destdir", root / field, "--workers", "1", *extra])
    return root


@pytest.fixture(scope="session")
def blimp_sample(tmp_path_factory) -> Path:
    """3 BLiMP pairs from each of 2 paradigms (different fields) of blimp-dev."""
    root = tmp_path_factory.mktemp("blimp")
    for name in ("adjunct_island", "irregular_past_participle_verbs"):
        lines = (SHARED_DATA / "blimp-dev" / f"{name}.jsonl").read_text().splitlines()[:3]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return root
