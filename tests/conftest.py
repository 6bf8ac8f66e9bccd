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


@pytest.fixture(scope="session")
def book_data(tmp_path_factory) -> Path:
    """Long documents for the long-document LMs: 6 train, 2 valid and 3 test 'books' (slices of
    the bundled pg-sample), prepared with a 500-piece sentencepiece vocabulary."""
    from fairseq_ext.data import prepare

    root = tmp_path_factory.mktemp("books")
    books = sorted((Path(__file__).resolve().parents[1] / "examples" / "data" / "pg-sample" / "train").glob("*.txt"))
    layout = {"train": [(b, 0, 6000) for b in books[:6]], "valid": [(books[6], 0, 3000), (books[7], 0, 2000)],
              "test": [(books[6], 20000, 4000), (books[7], 20000, 1500), (books[0], 50000, 150)]}
    for split, slices in layout.items():
        for i, (book, start, size) in enumerate(slices):
            (root / "raw" / split).mkdir(parents=True, exist_ok=True)
            (root / "raw" / split / f"{i}.txt").write_text(book.read_text(encoding="utf-8")[start:start + size])
    out = root / "bin"
    prepare.main(["--input", str(root / "raw"), "--out", str(out), "--vocab-size", "500", "--workers", "1"])
    return out
