"""Every command line of the README's bash blocks runs, at tiny size, so the README cannot drift.

Each `.venv/bin/fairseq-train`, `.venv/bin/fairseq-hydra-train` and `.venv/bin/python -m
fairseq_ext.data.prepare` line is run as written except for sizes and paths: the data dir becomes the
tests' tiny data, the arch its `_tiny` preset, the budget a few updates, the save dir a temp dir.
Every flag name and every other value is the README's own.
"""
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
from omegaconf import OmegaConf

from helpers import BIN, REPO, USER_DIR, subprocess_env

PROGRAMS = (".venv/bin/fairseq-train", ".venv/bin/fairseq-hydra-train", ".venv/bin/python -m fairseq_ext.data.prepare")
UPDATES = 3
# flag -> value at test size (the flag is only replaced where the README gives it)
TINY_VALUES = {"--max-update": UPDATES, "--total-num-update": UPDATES, "--warmup-updates": 1,
               "--batch-size": 4, "--tokens-per-sample": 64, "--vocab-size": 300}
SIZE_SUFFIX = re.compile(r"_(small|base|large|paper)$")


def readme_commands(text: str) -> List[List[str]]:
    """The argv of every README bash-block line that starts with one of ``PROGRAMS``."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith(PROGRAMS):
                commands.append(shlex.split(line, comments=True))
    return commands


COMMANDS = readme_commands((REPO / "README.md").read_text())


def command_id(argv: List[str]) -> str:
    program = Path(argv[0]).name if argv[0] != ".venv/bin/python" else argv[2]
    detail = _value(argv, "--arch") or _value(argv, "--config-name") or _value(argv, "--out") or ""
    return f"{program}:{Path(detail).name}"


def _value(argv: List[str], flag: str):
    return argv[argv.index(flag) + 1] if flag in argv else None


def tiny_arch(arch: str) -> str:
    return SIZE_SUFFIX.sub("_tiny", arch)


def tiny_fairseq_train(argv: List[str], data: Path, save_dir: Path) -> List[str]:
    out = [str(BIN / "fairseq-train")]
    args = iter(argv[1:])
    for arg in args:
        if arg.startswith("data-bin/"):
            out.append(str(data))
        elif arg in TINY_VALUES:
            out += [arg, str(TINY_VALUES[arg])]
            next(args)
        elif arg in ("--arch", "--user-dir", "--save-dir"):
            value = next(args)
            out += [arg, {"--arch": tiny_arch(value), "--user-dir": USER_DIR, "--save-dir": str(save_dir)}[arg]]
        else:
            out.append(arg)
    return out + ["--num-workers", "0"] + ([] if "--cpu" in out else ["--cpu"])


def tiny_hydra_train(argv: List[str], data: Path, save_dir: Path) -> List[str]:
    recipe = OmegaConf.load(REPO / _value(argv, "--config-dir") / f"{_value(argv, '--config-name')}.yaml")
    known = {"task.data": str(data), "common.user_dir": USER_DIR}
    out = [str(BIN / "fairseq-hydra-train")]
    for arg in argv[1:]:
        key = arg.split("=", 1)[0]
        out.append(f"{key}={known[key]}" if key in known else str(REPO / arg) if arg.startswith("hydra_configs") else arg)
    out += [f"model._name={tiny_arch(recipe.model._name)}", "task.tokens_per_sample=64",
            f"optimization.max_update={UPDATES}", "optimization.update_freq=[1]", "dataset.batch_size=4",
            "dataset.num_workers=0", "common.cpu=true", f"checkpoint.save_dir={save_dir}"]
    if "max_positions" in recipe.model:
        out.append("model.max_positions=64")
    if "warmup_updates" in recipe.lr_scheduler:
        out.append("lr_scheduler.warmup_updates=1")
    return out


def tiny_prepare(argv: List[str], tiny_text: Path, documents: Path, out_dir: Path) -> List[str]:
    paths = {"--input": documents, "--train": tiny_text / "train.txt", "--valid": tiny_text / "valid.txt",
             "--out": out_dir}
    out = [sys.executable]
    args = iter(argv[1:])
    for arg in args:
        if arg in paths or arg in TINY_VALUES:
            next(args)
            out += [arg, str(paths[arg] if arg in paths else TINY_VALUES[arg])]
        else:
            out.append(arg)
    return out


@pytest.fixture(scope="module")
def documents(tiny_text, tmp_path_factory) -> Path:
    """tiny_text as a directory of documents (train/ valid/ test/, one document per file)."""
    root = tmp_path_factory.mktemp("documents")
    for split, source in (("train", "train.txt"), ("valid", "valid.txt"), ("test", "valid.txt")):
        (root / split).mkdir()
        docs = [doc for doc in (tiny_text / source).read_text().split("\n = ") if doc.strip()]
        for i, doc in enumerate(docs[:4]):
            (root / split / f"{i}.txt").write_text(doc)
    return root


def test_readme_shows_every_family_on_the_command_line_and_in_yaml():
    archs = {_value(c, "--arch") for c in COMMANDS if "--arch" in c}
    configs = {_value(c, "--config-dir") for c in COMMANDS if "--config-dir" in c}
    assert {a.split("_")[0] for a in archs} >= {"roberta", "glom", "elc", "txl"}, archs
    assert configs >= {f"hydra_configs/{f}" for f in ("quickstart", "roberta_ext", "glom", "elc_bert", "txl")}, configs
    assert sum("fairseq_ext.data.prepare" in c for c in COMMANDS) == 2


@pytest.mark.parametrize("argv", COMMANDS, ids=[command_id(c) for c in COMMANDS])
def test_readme_command_runs_at_tiny_size(argv, tiny_data, tiny_text, documents, tmp_path):
    save_dir = tmp_path / "ckpt"
    if argv[0].endswith("fairseq-train"):
        cmd = tiny_fairseq_train(argv, tiny_data, save_dir)
    elif argv[0].endswith("fairseq-hydra-train"):
        cmd = tiny_hydra_train(argv, tiny_data, save_dir)
    else:
        cmd = tiny_prepare(argv, tiny_text, documents, tmp_path / "prepared")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=subprocess_env())
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{shlex.join(cmd)}\n{output[-6000:]}"
    if "fairseq_ext.data.prepare" in argv:
        assert all((tmp_path / "prepared" / f).is_file() for f in ("dict.txt", "train.bin", "valid.bin"))
    else:
        assert re.search(rf"num_updates\W+{UPDATES}\b", output), output[-3000:]  # simple and json logs
        assert (save_dir / "checkpoint_last.pt").is_file()
