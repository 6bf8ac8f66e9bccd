"""Raw text -> fairseq binaries with a sentencepiece vocabulary, in one command.

    python -m fairseq_ext.data.prepare --input RAW_DIR --out data-bin/NAME --vocab-size 8000
    python -m fairseq_ext.data.prepare --train a.txt --valid b.txt --out data-bin/NAME

A directory is read as one document per file (every regular file below it, sorted); a single
file holds documents separated by blank lines. Inside a document each paragraph (a run of
non-blank lines) becomes one line of the output, and documents are separated by an empty line,
which is what fairseq's ``complete_doc`` / ``eos`` break modes and ``TokenBlockDataset`` expect.

The sentencepiece model is trained on the train split (or reused), the dictionary is written
from its vocabulary in fairseq's ``dict.txt`` format (so masked-LM and LM tasks accept it), and
``fairseq-preprocess --only-source`` writes ``{train,valid,test}.{bin,idx}``. The output
directory also holds ``sentencepiece.bpe.model``, the name ``RobertaModel.from_pretrained``
picks up by itself. Running the command again with the same inputs and options reuses
everything; ``prepare.json`` records what an output was built from (options, sha256 of every
input), and any difference rebuilds (the sentencepiece model only when its own inputs differ).
"""
import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

logger = logging.getLogger("fairseq_ext.data.prepare")

SPM_FILE = "sentencepiece.bpe.model"
STAMP_FILE = "prepare.json"
SPLITS = ("train", "valid", "test")
# Pieces sentencepiece reserves; fairseq's Dictionary brings its own <s> <pad> </s> <unk>.
SPM_CONTROL_PIECES = {"<unk>", "<s>", "</s>", "<pad>"}


class PrepareError(ValueError):
    """Bad input to data preparation; the message names the flag or file at fault."""


# --------------------------------------------------------------------------- reading
def decode_bytes(raw: bytes, path: Path, errors: str) -> str:
    try:
        text = raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise PrepareError(
            f"{path}: not valid UTF-8 at byte offset {e.start} "
            f"(bytes {raw[e.start:e.start + 4]!r}); re-encode the file as UTF-8 or pass "
            f"--encoding-errors replace"
        ) from None
    if "\x00" in text:  # valid UTF-8 but no text (an image, an archive of zeros, a binary dump)
        raise PrepareError(f"{path}: a binary file (NUL byte at byte offset {raw.index(0)}), not text; "
                           f"pass plain UTF-8 text")
    return text


def split_paragraphs(text: str) -> List[str]:
    """Paragraphs = runs of non-blank lines, each joined into one line."""
    paragraphs, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def list_input_files(path: Path, flag: str) -> List[Path]:
    if not path.exists():
        raise PrepareError(f"{flag}: no such file or directory: {path}")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise PrepareError(f"{flag}: directory {path} holds no files")
    return files


def read_documents(paths: Sequence[Path], flag: str, errors: str) -> List[List[str]]:
    """Documents (lists of paragraphs) from files or directories; see the module docstring."""
    documents = []
    for path in paths:
        for file in list_input_files(path, flag):
            paragraphs = split_paragraphs(decode_bytes(file.read_bytes(), file, errors))
            if path.is_dir():
                documents += [paragraphs] if paragraphs else []
            else:
                documents.extend([p] for p in paragraphs)
    if not documents:
        raise PrepareError(f"{flag}: the input is empty (no non-blank text in {', '.join(map(str, paths))})")
    return documents


# --------------------------------------------------------------------------- sentencepiece
def train_sentencepiece(documents: List[List[str]], vocab_size: int, out_file: Path, seed_dir: Path) -> None:
    import sentencepiece as spm

    text_file = seed_dir / "spm_train.txt"
    with open(text_file, "w", encoding="utf-8") as f:
        for doc in documents:
            f.writelines(p + "\n" for p in doc)
    prefix = seed_dir / "spm"
    try:
        spm.SentencePieceTrainer.train(
            input=str(text_file), model_prefix=str(prefix), vocab_size=vocab_size,
            model_type="unigram", character_coverage=1.0, input_sentence_size=2_000_000,
            shuffle_input_sentence=True, num_threads=os.cpu_count() or 1,
            max_sentence_length=16384, minloglevel=2,
        )
    except RuntimeError as e:
        if "smaller than required_chars" in str(e):  # every character of the corpus needs a piece
            raise PrepareError(
                f"--vocab-size {vocab_size} is too small for this corpus: {e}. Raise --vocab-size."
            ) from None
        if "Vocabulary size" in str(e):
            raise PrepareError(
                f"--vocab-size {vocab_size} is too large for this corpus: {e}. Lower --vocab-size."
            ) from None
        raise
    shutil.copyfile(f"{prefix}.model", out_file)


def load_sentencepiece(path: Path):
    import sentencepiece as spm

    if not path.is_file():
        raise PrepareError(f"--spm-model: no such file: {path}")
    return spm.SentencePieceProcessor(model_file=str(path))


def encode_split(sp, documents: List[List[str]], out_file: Path, counts: Counter) -> None:
    """One encoded paragraph per line, an empty line between documents."""
    with open(out_file, "w", encoding="utf-8") as f:
        for i, doc in enumerate(documents):
            if i:
                f.write("\n")
            for pieces in sp.encode(doc, out_type=str):
                counts.update(pieces)
                f.write(" ".join(pieces) + "\n")


def write_dictionary(sp, counts: Counter, out_file: Path) -> None:
    """fairseq dict.txt: every sentencepiece piece (control pieces excepted), with its count."""
    with open(out_file, "w", encoding="utf-8") as f:
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if piece not in SPM_CONTROL_PIECES:
                f.write(f"{piece} {counts.get(piece, 0)}\n")


# --------------------------------------------------------------------------- binarising
def binarize(text_dir: Path, splits: Sequence[str], out_dir: Path, workers: int) -> None:
    from fairseq import options
    from fairseq_cli import preprocess

    argv = ["--only-source", "--srcdict", str(out_dir / "dict.txt"), "--destdir", str(out_dir),
            "--workers", str(workers), "--dataset-impl", "mmap"]
    for split in splits:
        argv += [f"--{split}pref", str(text_dir / split)]
    args = options.get_preprocessing_parser().parse_args(argv)
    preprocess.main(args)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_record(split_paths: Dict[str, List[Path]], args) -> Dict:
    """The options and input contents (sha256) an output is built from, stored in prepare.json.

    ``spm`` is what the sentencepiece model depends on (vocab size, --spm-model's content or the
    train text), ``all`` everything the binaries depend on. A re-run rebuilds whatever differs, so
    a changed option (e.g. --vocab-size) is never lost by reusing an old model."""
    inputs = {split: {str(file.resolve()): file_sha256(file)
                      for path in paths for file in list_input_files(path, f"--{split}")}
              for split, paths in split_paths.items()}
    options = {"encoding_errors": args.encoding_errors}
    if args.spm_model:
        load_sentencepiece(Path(args.spm_model))  # fails early, naming --spm-model
        spm = {"spm_model": file_sha256(Path(args.spm_model))}
    else:
        spm = {"vocab_size": args.vocab_size, "encoding_errors": args.encoding_errors, "train": inputs["train"]}
    return {"spm": spm, "all": {"options": options, "spm": spm, "inputs": inputs}}


def resolve_splits(args) -> Dict[str, List[Path]]:
    splits = {s: [Path(p) for p in getattr(args, s) or []] for s in SPLITS}
    if args.input:
        root = Path(args.input)
        if not root.is_dir():
            raise PrepareError(f"--input: {root} is not a directory with train/ valid/ test/ inside")
        for split in SPLITS:
            if not splits[split] and (root / split).exists():
                splits[split] = [root / split]
    if not splits["train"]:
        raise PrepareError("no training text: pass --train PATH or --input DIR with a train/ folder")
    return {s: p for s, p in splits.items() if p}


def prepare(args) -> Path:
    out_dir = Path(args.out)
    split_paths = resolve_splits(args)
    record = build_record(split_paths, args)
    stamp = out_dir / STAMP_FILE
    spm_file = out_dir / SPM_FILE
    previous = json.loads(stamp.read_text()).get("built_from", {}) if stamp.exists() else {}
    if not args.force and previous == record["all"] and spm_file.exists():
        logger.info("%s is up to date; reusing it (--force to rebuild)", out_dir)
        return out_dir
    documents = {s: read_documents(p, f"--{s}", args.encoding_errors) for s, p in split_paths.items()}
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)  # until the stamp is rewritten, the directory is not a finished build
    try:
        build(args, documents, out_dir, spm_file, previous, record)
    except BaseException:
        if created:  # no half-written output directory is left behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    logger.info("wrote %s", out_dir)
    return out_dir


def build(args, documents, out_dir: Path, spm_file: Path, previous: Dict, record: Dict) -> None:
    """sentencepiece model, dict.txt and binaries in ``out_dir``, the stamp last."""
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp = Path(tmp)
        if args.spm_model:
            if Path(args.spm_model).resolve() != spm_file.resolve():
                shutil.copyfile(args.spm_model, spm_file)
        elif args.force or not spm_file.exists() or previous.get("spm") != record["spm"]:
            logger.info("training sentencepiece (vocab %d) on %d documents", args.vocab_size, len(documents["train"]))
            train_sentencepiece(documents["train"], args.vocab_size, spm_file, tmp)
        else:
            logger.info("reusing %s (built from the same train text and options)", spm_file)
        sp = load_sentencepiece(spm_file)
        counts = Counter()
        for split, docs in documents.items():
            encode_split(sp, docs, tmp / split, counts if split == "train" else Counter())
        write_dictionary(sp, counts, out_dir / "dict.txt")
        binarize(tmp, list(documents), out_dir, args.workers)
    (out_dir / STAMP_FILE).write_text(json.dumps({"built_from": record["all"], "vocab_size": sp.get_piece_size(),
                                                  "documents": {s: len(d) for s, d in documents.items()}}, indent=1))


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="directory with train/ valid/ test/ sub-folders or files (e.g. unpacked pg-mini)")
    for split in SPLITS:
        p.add_argument(f"--{split}", nargs="+", metavar="PATH",
                       help=f"{split} text: files (documents separated by blank lines) or directories (one document per file)")
    p.add_argument("--out", required=True, help="output directory (fairseq data dir)")
    p.add_argument("--vocab-size", type=int, default=8000, help="sentencepiece vocabulary size")
    p.add_argument("--spm-model", help="reuse this sentencepiece model instead of training one")
    p.add_argument("--encoding-errors", choices=["strict", "replace"], default="strict",
                   help="what to do with bytes that are not UTF-8: fail naming file and offset, or replace them")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="fairseq-preprocess workers")
    p.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")
    return p


def main(argv: Optional[List[str]] = None) -> None:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    args = get_parser().parse_args(argv)
    if args.vocab_size < 8:
        raise SystemExit(f"prepare: error: --vocab-size must be at least 8, got {args.vocab_size}")
    try:
        prepare(args)
    except PrepareError as e:
        raise SystemExit(f"prepare: error: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
