"""A checkpoint naming an arch this version of the plugin does not register fails with a message
that says what to do, where fairseq's own lookup fails formatting its message (``IndexError:
Replacement index 1 out of range`` / ``KeyError: '_name'``, FAIRSEQ_NOTES).

The plugin's tasks (``long_document_lm``, ``masked_lm_ext``, ``elc_span_masked_lm``) check in
``build_model``; a stock task (``masked_lm``) has no hook, so ``fairseq_ext.hub.from_pretrained``
checks when the stock load fails.
"""
import fairseq_ext

from fairseq.utils import safe_getattr


def model_name(model_cfg):
    """The arch (or model) name a model config asks for."""
    return safe_getattr(model_cfg, "arch", None) or safe_getattr(model_cfg, "_name", None)


def is_registered(name) -> bool:
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY

    return name in ARCH_MODEL_REGISTRY or name in MODEL_REGISTRY


def unknown_arch_error(name) -> ValueError:
    return ValueError(
        f"the checkpoint's arch {name!r} is not registered: this fairseq_ext ({fairseq_ext.__version__}) does "
        f"not know it (a later or earlier version of the plugin, or another plugin, saved it). "
        f"upgrade fairseq_ext to the version that saved the checkpoint (or pass --user-dir / user_dir= of "
        f"the plugin that registers {name!r}); `python -c \"import fairseq_ext, fairseq.models as m; "
        f"print(sorted(a for a, c in m.ARCH_MODEL_REGISTRY.items() if c.__module__.startswith('fairseq_ext')))\"` "
        f"lists the archs this version has")


def require_registered(model_cfg) -> None:
    """Raise ``unknown_arch_error`` for a model config whose arch nothing registers."""
    name = model_name(model_cfg)
    if name is not None and not is_registered(name):
        raise unknown_arch_error(name)


def checkpoint_arch(path):
    """The arch a fairseq checkpoint file names (argparse or hydra checkpoint), or None."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("cfg") is not None:
        return model_name(state["cfg"]["model"])
    return model_name(state.get("args"))


# ---------------------------------------------------------------------------------------------
# A killed save. fairseq writes the first checkpoint of a save to ``<name>.tmp`` and renames it
# (atomic), then *copies* it to the others (``checkpoint_best.pt``, ``checkpoint_last.pt``) with
# a plain file copy: a process killed inside that copy leaves a truncated ``checkpoint_last.pt``
# and the next fairseq-train fails loading it. ``python -m fairseq_ext.checkpoints SAVE_DIR``
# says so and names the newest whole checkpoint; ``--repair`` makes it checkpoint_last.pt.

def loads(path) -> bool:
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=False)
        return True
    except Exception:  # a truncated zip, an empty file: not loadable, whatever torch raises
        return False


def updates_of(path) -> int:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    return int(state["optimizer_history"][-1]["num_updates"])


def newest_loadable(save_dir):
    """The loadable ``checkpoint*.pt`` of ``save_dir`` with the most updates (None if none)."""
    from pathlib import Path

    best, best_updates = None, -1
    for path in sorted(Path(save_dir).glob("checkpoint*.pt")):
        if loads(path) and updates_of(path) > best_updates:
            best, best_updates = path, updates_of(path)
    return best


def repair(save_dir) -> str:
    """Make checkpoint_last.pt loadable again from the newest whole checkpoint (tmp + rename)."""
    import os
    import shutil
    from pathlib import Path

    last = Path(save_dir) / "checkpoint_last.pt"
    if last.exists() and loads(last):
        return f"{last} loads; nothing to repair"
    source = newest_loadable(save_dir)
    if source is None or source == last:
        raise ValueError(f"no loadable checkpoint in {save_dir}")
    shutil.copyfile(source, str(last) + ".tmp")
    os.replace(str(last) + ".tmp", last)
    return f"{last} was not loadable; replaced by {source.name} ({updates_of(source)} updates)"


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Check that a save dir's checkpoint_last.pt loads; "
                                                 "name (or restore) the newest whole checkpoint if not.")
    parser.add_argument("save_dir")
    parser.add_argument("--repair", action="store_true", help="replace a broken checkpoint_last.pt by the newest whole one")
    args = parser.parse_args(argv)
    from pathlib import Path

    last = Path(args.save_dir) / "checkpoint_last.pt"
    if args.repair:
        print(repair(args.save_dir))
    elif last.exists() and loads(last):
        print(f"{last} loads ({updates_of(last)} updates)")
    else:
        source = newest_loadable(args.save_dir)
        raise SystemExit(f"{last} does not load (a save killed while fairseq copied it?); the newest whole "
                         f"checkpoint is {source}: resume with --restore-file {source}, or run "
                         f"python -m fairseq_ext.checkpoints {args.save_dir} --repair" if source else
                         f"{last} does not load and no checkpoint in {args.save_dir} does")


if __name__ == "__main__":
    main()
