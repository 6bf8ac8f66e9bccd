import shutil
from pathlib import Path

import pytest

from helpers import SHARED_DATA


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
