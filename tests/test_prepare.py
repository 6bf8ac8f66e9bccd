"""fairseq_ext.data.prepare: raw text -> binaries that fairseq's MLM and LM tasks load."""
import pytest
from fairseq import options, tasks
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from fairseq_ext.data import prepare


def run(*argv):
    prepare.main([str(a) for a in argv])


def setup_task(task, data):
    """A fairseq task configured exactly as fairseq-train would (argparse -> omegaconf)."""
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data), "--task", task, "--arch", "roberta_base" if task == "masked_lm" else "transformer_lm",
        "--tokens-per-sample", "64"])
    return tasks.setup_task(convert_namespace_to_omegaconf(args).task)


def test_outputs_load_in_masked_lm_and_language_model_tasks(tiny_data):
    for name in ["train.bin", "train.idx", "valid.bin", "valid.idx", "dict.txt", "sentencepiece.bpe.model"]:
        assert (tiny_data / name).is_file(), name
    mlm = setup_task("masked_lm", tiny_data)
    mlm.load_dataset("valid")
    assert len(mlm.dataset("valid")) > 0 and mlm.source_dictionary.index("<mask>") == mlm.mask_idx
    lm = setup_task("language_modeling", tiny_data)
    lm.load_dataset("valid")
    assert len(lm.dataset("valid")) > 0


def test_dictionary_is_the_sentencepiece_vocabulary(tiny_data):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_data / "sentencepiece.bpe.model"))
    d = Dictionary.load(str(tiny_data / "dict.txt"))
    assert len(d) == d.nspecial + sp.get_piece_size() - 3  # minus sentencepiece's <unk> <s> </s>
    assert all(d.index(sp.id_to_piece(i)) != d.unk() for i in range(3, sp.get_piece_size()))


def test_directory_input_is_one_document_per_file(tmp_path, tiny_data):
    raw = tmp_path / "raw"
    (raw / "train").mkdir(parents=True)
    (raw / "train" / "a.txt").write_text("First line\nwrapped here.\n\nSecond paragraph.\n")
    (raw / "train" / "b.txt").write_text("Another book.\n")
    out = tmp_path / "out"
    run("--input", raw, "--out", out, "--spm-model", tiny_data / "sentencepiece.bpe.model", "--workers", 1)
    from fairseq.data import data_utils

    ds = data_utils.load_indexed_dataset(str(out / "train"), Dictionary.load(str(out / "dict.txt")))
    # paragraphs of a.txt, the empty document separator, b.txt
    assert [len(ds[i]) > 1 for i in range(len(ds))] == [True, True, False, True]


def test_rerun_reuses_and_force_rebuilds(tmp_path, tiny_text, caplog):
    out = tmp_path / "out"
    args = ["--train", tiny_text / "valid.txt", "--out", out, "--vocab-size", 300, "--workers", 1]
    run(*args)
    mtime = (out / "train.bin").stat().st_mtime_ns
    run(*args)
    assert (out / "train.bin").stat().st_mtime_ns == mtime
    run(*args, "--force")
    assert (out / "train.bin").stat().st_mtime_ns != mtime


def test_rerun_with_another_vocab_size_rebuilds(tmp_path, tiny_text):
    """A changed option must not be lost by reusing the old sentencepiece model (issue 10)."""
    out = tmp_path / "out"
    base = ["--train", tiny_text / "valid.txt", "--out", out, "--workers", 1]
    run(*base, "--vocab-size", 200)
    spm_200, dict_200 = (out / "sentencepiece.bpe.model").read_bytes(), (out / "dict.txt").read_text()
    run(*base, "--vocab-size", 300)
    spm_300, dict_300 = (out / "sentencepiece.bpe.model").read_bytes(), (out / "dict.txt").read_text()
    assert spm_300 != spm_200 and dict_300 != dict_200
    assert len(dict_300.splitlines()) == 300 - 3  # sentencepiece's <unk> <s> </s> are not listed
    mtime = (out / "train.bin").stat().st_mtime_ns
    run(*base, "--vocab-size", 300)
    assert (out / "sentencepiece.bpe.model").read_bytes() == spm_300
    assert (out / "train.bin").stat().st_mtime_ns == mtime


def test_changed_input_content_rebuilds(tmp_path, tiny_text):
    text = tmp_path / "train.txt"
    text.write_bytes((tiny_text / "valid.txt").read_bytes())
    out = tmp_path / "out"
    args = ["--train", text, "--out", out, "--vocab-size", 200, "--workers", 1]
    run(*args)
    spm_before = (out / "sentencepiece.bpe.model").read_bytes()
    text.write_bytes((tiny_text / "train.txt").read_bytes()[:50_000])
    run(*args)
    assert (out / "sentencepiece.bpe.model").read_bytes() != spm_before


@pytest.mark.parametrize("make_input, message", [
    (lambda d: d / "missing.txt", "--train: no such file or directory"),
    (lambda d: (d / "empty.txt").write_text("\n \n") and d / "empty.txt", "--train: the input is empty"),
    (lambda d: (d / "bad.txt").write_bytes(b"good text\nbad \xff byte\n") and d / "bad.txt", "bad.txt: not valid UTF-8 at byte offset 14"),
    (lambda d: (d / "dump.bin").write_bytes(b"text\n\x00\x00\x01\x02" * 50) and d / "dump.bin", "dump.bin: a binary file (NUL byte at byte offset 5)"),
])
def test_bad_input_names_the_flag_or_file(tmp_path, make_input, message):
    with pytest.raises(SystemExit) as e:
        run("--train", make_input(tmp_path), "--out", tmp_path / "out", "--vocab-size", 100)
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_undecodable_bytes_can_be_replaced(tmp_path, tiny_data):
    (tmp_path / "bad.txt").write_bytes(b"good text\nbad \xff byte\n")
    run("--train", tmp_path / "bad.txt", "--out", tmp_path / "out", "--encoding-errors", "replace",
        "--spm-model", tiny_data / "sentencepiece.bpe.model", "--workers", 1)
    assert (tmp_path / "out" / "train.bin").is_file()


def test_vocabulary_too_large_for_the_corpus(tmp_path):
    (tmp_path / "small.txt").write_text("a tiny corpus with few words\n")
    with pytest.raises(SystemExit) as e:
        run("--train", tmp_path / "small.txt", "--out", tmp_path / "out", "--vocab-size", 5000)
    assert "--vocab-size 5000 is too large" in str(e.value)
    assert not (tmp_path / "out").exists()  # the failure came after the directory was made: removed


def test_a_failed_rebuild_of_an_existing_directory_is_not_reused(tmp_path, tiny_text):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="--vocab-size 100 is too small for this corpus.*Raise --vocab-size"):
        run("--train", tiny_text / "train.txt", "--out", out, "--vocab-size", 100, "--workers", 1)
    assert not out.exists()
    run("--train", tiny_text / "train.txt", "--out", out, "--vocab-size", 300, "--workers", 1)
    (tmp_path / "small.txt").write_text("a tiny corpus with few words\n")
    with pytest.raises(SystemExit):
        run("--train", tmp_path / "small.txt", "--out", out, "--vocab-size", 5000)
    assert not (out / prepare.STAMP_FILE).exists()  # a rerun rebuilds instead of reusing half a build
