"""Shared helpers for tests that run real fairseq processes."""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
USER_DIR = str(REPO / "fairseq_ext")
SHARED_DATA = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent


def subprocess_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def run_fairseq(argv: List[str], timeout: float = 300, cwd=None, env=None,
                input: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run a fairseq console script (``fairseq-train`` ...) of this venv, ``input`` on its stdin;
    fail with its output."""
    cmd = [str(BIN / argv[0])] + [str(a) for a in argv[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=subprocess_env(env), input=input)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def run_python(code: str, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process (nothing of this process imported)."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=subprocess_env())
    if proc.returncode != 0:
        raise AssertionError(f"python -c failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def json_log_records(output: str, prefix: str = "train_inner") -> List[dict]:
    """Records fairseq prints with ``--log-format json`` (one JSON object per line)."""
    records = []
    for line in output.splitlines():
        start = line.find("{")
        if start < 0 or f"| {prefix} |" not in line and prefix != "*":
            continue
        try:
            records.append(json.loads(line[start:]))
        except json.JSONDecodeError:
            continue
    return records


def tiny_train_args(data_dir, save_dir, arch="roberta_ext_baseline_tiny", updates=20, extra=()) -> List[str]:
    """A few-second masked-LM fairseq-train command line on CPU."""
    return ["fairseq-train", str(data_dir), "--user-dir", USER_DIR, "--task", "masked_lm",
            "--criterion", "masked_lm", "--arch", arch, "--cpu", "--num-workers", "0",
            "--tokens-per-sample", "64", "--sample-break-mode", "none", "--batch-size", "16",
            "--optimizer", "adam", "--lr", "1e-3", "--lr-scheduler", "inverse_sqrt",
            "--warmup-updates", "5", "--max-update", str(updates), "--log-format", "json",
            "--log-interval", "2", "--save-dir", str(save_dir), "--no-epoch-checkpoints",
            "--seed", "1", *extra]


def build_tiny_lm(arch: str, tokens_per_sample: int, seed: int = 0, vocab: int = 40, **options):
    """A long-document LM built in process from its arch preset for segments of
    ``tokens_per_sample`` tokens (a stand-in task holding a ``vocab``-word dictionary), eval mode."""
    import argparse
    from types import SimpleNamespace

    import torch
    from fairseq.data import Dictionary
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY

    import fairseq_ext  # noqa: F401  (registers)

    torch.manual_seed(seed)
    args = argparse.Namespace(arch=arch, tokens_per_sample=tokens_per_sample, **options)
    ARCH_CONFIG_REGISTRY[arch](args)
    dictionary = Dictionary()
    for i in range(vocab):
        dictionary.add_symbol(f"w{i}")
    task = SimpleNamespace(target_dictionary=dictionary, cfg=SimpleNamespace(tokens_per_sample=tokens_per_sample))
    return ARCH_MODEL_REGISTRY[arch].build_model(args, task).eval()


def long_document_train_args(data, save_dir, arch: str, tokens_per_sample: int, updates: int,
                             extra=()) -> List[str]:
    """A few-second fairseq-train of a tiny long-document LM over streamed books on CPU
    (2 lanes, no dropout, validation every 6 updates)."""
    return ["fairseq-train", str(data), "--user-dir", USER_DIR, "--task", "long_document_lm",
            "--arch", arch, "--criterion", "cross_entropy", "--tokens-per-sample", str(tokens_per_sample),
            "--batch-size", "2", "--optimizer", "adam", "--lr", "1e-2", "--lr-scheduler", "fixed",
            "--max-update", str(updates), "--cpu", "--num-workers", "0", "--log-format", "json",
            "--log-interval", "1", "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--seed", "3",
            "--validate-interval-updates", "6", "--dropout", "0", "--attention-dropout", "0", *extra]


def train_long_document_lm(data, save_dir, arch: str, tokens_per_sample: int, updates: int, extra=()):
    """Run ``long_document_train_args``; return the save dir and what fairseq printed."""
    proc = run_fairseq(long_document_train_args(data, save_dir, arch, tokens_per_sample, updates, extra))
    return save_dir, proc.stdout + proc.stderr


def assert_training_lowered_the_loss(output: str, updates: int, window: int, margin: float) -> None:
    """``updates`` logged losses whose last ``window`` average ``margin`` below the first ``window``,
    and a validation in between."""
    losses = [float(r["loss"]) for r in json_log_records(output)]
    assert len(losses) == updates
    assert sum(losses[-window:]) / window < sum(losses[:window]) / window - margin, losses
    assert json_log_records(output, prefix="valid"), "validation ran"


def saved_extra_states(save_dir: Path, suffix: str) -> list:
    """The ``_extra_state`` entries (caches, memories, recurrent states) of ``checkpoint_last.pt``
    whose keys end with ``suffix``."""
    import torch

    state = torch.load(Path(save_dir) / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    return [v for k, v in state.items() if k.endswith(suffix)]


def train_on_two_cpu_processes(argv: List[str], timeout: float = 300) -> str:
    """``fairseq-train argv`` (without the program name) on 2 gloo processes through
    ``fairseq_ext.launch_cpu``; return what it printed, after checking it trained on 2 devices."""
    proc = subprocess.run([sys.executable, "-m", "fairseq_ext.launch_cpu", "--nprocs", "2", "--", *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-5000:]
    output = proc.stdout + proc.stderr
    assert "training on 2 devices" in output
    return output


def sample_from_pretrained(save_dir, data, prompt: str = "The captain said", max_len_b: int = 80) -> str:
    """Text sampled (top-10, seed 0) by a causal LM loaded with stock
    ``TransformerLanguageModel.from_pretrained`` in a fresh process."""
    code = f"""
import fairseq_ext, torch
from fairseq.models.transformer_lm import TransformerLanguageModel
lm = TransformerLanguageModel.from_pretrained({str(save_dir)!r}, "checkpoint_last.pt", {str(data)!r},
    bpe="sentencepiece", sentencepiece_model={str(Path(data) / "sentencepiece.bpe.model")!r})
torch.manual_seed(0)
print("SAMPLE:" + lm.sample({prompt!r}, beam=1, sampling=True, sampling_topk=10, max_len_b={max_len_b}))
"""
    return run_python(code).stdout.split("SAMPLE:")[-1].strip()


def score_books(save_dir, data, tokens_per_sample: int, json_out, *options) -> dict:
    """``python -m fairseq_ext.eval.books`` on the test books of ``data`` with ``checkpoint_last.pt``
    of ``save_dir`` (``options``: e.g. ``--batch-size 2 --all-lanes true``); its JSON result."""
    proc = subprocess.run([sys.executable, "-m", "fairseq_ext.eval.books", str(data), "--path",
                           str(Path(save_dir) / "checkpoint_last.pt"), "--user-dir", USER_DIR, "--task",
                           "long_document_lm", "--gen-subset", "test", "--tokens-per-sample", str(tokens_per_sample),
                           "--cpu", "--json-out", str(json_out), *map(str, options)],
                          capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(Path(json_out).read_text())


def set_arg(argv: List[str], flag: str, value) -> List[str]:
    """A copy of ``argv`` with ``flag``'s value replaced (or the flag appended)."""
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = str(value)
    else:
        argv += [flag, str(value)]
    return argv


def finetune_args(classification_data, arch, checkpoint, save_dir, updates=6, extra=()) -> List[str]:
    """Stock sentence_prediction fine-tuning of a plugin checkpoint (GLUE-style head)."""
    return ["fairseq-train", str(classification_data), "--user-dir", USER_DIR, "--task", "sentence_prediction",
            "--criterion", "sentence_prediction", "--num-classes", "2", "--init-token", "0", "--arch", arch,
            "--restore-file", str(checkpoint), "--reset-optimizer", "--reset-dataloader", "--reset-meters",
            "--cpu", "--num-workers", "0", "--batch-size", "16", "--optimizer", "adam", "--lr", "1e-4",
            "--max-update", str(updates), "--log-format", "json", "--save-dir", str(save_dir),
            "--no-epoch-checkpoints", "--shorten-method", "truncate", *extra]


def assert_finetuned(proc: subprocess.CompletedProcess) -> None:
    output = proc.stdout + proc.stderr
    assert "Loaded checkpoint" in output
    assert 0 <= float(json_log_records(output, prefix="valid")[-1]["valid_accuracy"]) <= 100


def sixteen_sentence_data(tiny_data: Path, tmp_path: Path, sentences: int = 16) -> Path:
    """16 one-sentence documents: two updates of 8 per epoch (1 x 8 or 2 processes x 4)."""
    from fairseq_ext.data import prepare

    words = (SHARED_DATA / "wikitext-2" / "wiki.valid.tokens").read_text().split()
    text = "\n\n".join(" ".join(words[i * 40:i * 40 + 12]) for i in range(sentences)) + "\n"
    (tmp_path / "train.txt").write_text(text)
    out = tmp_path / "bin"
    prepare.main(["--train", str(tmp_path / "train.txt"), "--valid", str(tmp_path / "train.txt"), "--out", str(out),
                  "--spm-model", str(tiny_data / "sentencepiece.bpe.model"), "--workers", "1"])
    return out


def data_parallel_args(data, save_dir, batch_size, arch="roberta_ext_baseline_tiny", extra=()):
    """Plain SGD, no dropout: the only difference between runs is how gradients are summed
    (Adam would blow float noise on near-zero gradients up to a full step).
    --grouped-shuffling keeps the sentences of an update the same for any number of ranks."""
    args = tiny_train_args(data, save_dir, arch, updates=4, extra=[
        "--dropout", "0", "--attention-dropout", "0", "--sample-break-mode", "complete_doc",
        "--required-batch-size-multiple", "1", "--disable-validation", "--grouped-shuffling", *extra])
    for flag, value in [("--batch-size", batch_size), ("--optimizer", "sgd"), ("--lr", 0.5),
                        ("--lr-scheduler", "fixed"), ("--warmup-updates", 0)]:
        args = set_arg(args, flag, value)
    return args


def assert_same_params(a, b):
    import torch

    for name, value in a.items():
        assert torch.allclose(value, b[name], atol=1e-6, rtol=1e-5), name


def final_params(save_dir: Path):
    import torch

    state = torch.load(save_dir / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    return state["model"], state["extra_state"]["train_iterator"]
