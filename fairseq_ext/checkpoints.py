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
