"""Every architecture fairseq_ext registers, and how to build, train and load each at tiny size.

The matrix of ``docs/RELIABILITY.md`` has one row per arch found here, so an arch registered
later (a new family, a new preset) appears in it without editing the tests.
"""
import argparse
import os
from pathlib import Path
from typing import Dict, List

import pytest

CAUSAL_SEGMENT = 64  # long-document LMs: segment of tokens (the tiny presets' window is 32)
MASKED_LENGTH = 32


def plugin_archs() -> Dict[str, type]:
    """arch name -> model class, for every arch whose model class lives in fairseq_ext."""
    from fairseq.models import ARCH_MODEL_REGISTRY

    import fairseq_ext  # noqa: F401  (registers)

    return {arch: cls for arch, cls in ARCH_MODEL_REGISTRY.items() if cls.__module__.startswith("fairseq_ext.")}


def is_causal(arch: str) -> bool:
    from fairseq.models import FairseqLanguageModel

    return issubclass(plugin_archs()[arch], FairseqLanguageModel)


def preset_values(arch: str) -> dict:
    """Every option value an arch's preset function fills into an empty namespace."""
    from fairseq.models import ARCH_CONFIG_REGISTRY

    args = argparse.Namespace(tokens_per_sample=CAUSAL_SEGMENT if is_causal(arch) else MASKED_LENGTH)
    if arch in ARCH_CONFIG_REGISTRY:
        ARCH_CONFIG_REGISTRY[arch](args)
    else:  # the model's own name, registered with its config dataclass
        plugin_archs()[arch].fill_defaults(args)
    return vars(args)


def tiny_options(arch: str) -> Dict[str, object]:
    """Options that shrink ``arch`` to the tiny arch of its model nearest to it (fewest differing
    values, e.g. roberta_ext_alibi_large -> roberta_ext_alibi_tiny): that tiny preset's values
    where they differ. A tiny arch needs none."""
    archs = plugin_archs()
    tiny = [a for a, cls in archs.items() if cls is archs[arch] and a.endswith("_tiny")]
    if not tiny:
        raise AssertionError(f"model {archs[arch].__name__} registers no *_tiny arch: the reliability matrix builds every "
                             f"arch at tiny size from one")
    mine = preset_values(arch)

    def differing(other):
        theirs = preset_values(other)
        return {k: v for k, v in theirs.items() if mine.get(k) != v and v is not None}

    nearest = min(tiny, key=lambda a: (len(differing(a)), a))
    return differing(nearest)


def as_flags(options: Dict[str, object]) -> List[str]:
    flags = []
    for key, value in sorted(options.items()):
        if key in ("arch", "_name"):
            continue
        flags += ["--" + key.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def model_flags(arch: str) -> List[str]:
    return ["--arch", arch, *as_flags(tiny_options(arch))]


def task_flags(arch: str, data: Path) -> List[str]:
    """The task a family trains with, as fairseq-train flags (data first)."""
    if is_causal(arch):
        return [str(data), "--task", "long_document_lm", "--tokens-per-sample", str(CAUSAL_SEGMENT),
                "--batch-size", "2"]
    return [str(data), "--task", "masked_lm", "--tokens-per-sample", str(MASKED_LENGTH),
            "--sample-break-mode", "none"]


def params(marked_subset=()):
    """pytest parameters, one per arch: the archs in ``marked_subset`` (one per family) run in the
    default ``pytest -q``, every other arch only with ``-m reliability``."""
    chosen = os.environ.get("RELIABILITY_ARCHS")  # python -m scripts.reliability --archs a,b
    archs = [a for a in plugin_archs() if chosen is None or a in chosen.split(",")]
    unknown = set(chosen.split(",")) - set(plugin_archs()) if chosen else set()
    if unknown:
        raise ValueError(f"RELIABILITY_ARCHS names archs nothing registers: {sorted(unknown)}")
    return [pytest.param(arch, id=arch, marks=() if arch in marked_subset else pytest.mark.reliability)
            for arch in archs]


def representatives() -> List[str]:
    """One tiny arch per model (the first registered), for the default test run."""
    chosen = {}
    for arch, cls in plugin_archs().items():
        if arch.endswith("_tiny"):
            chosen.setdefault(cls, arch)
    return list(chosen.values())
