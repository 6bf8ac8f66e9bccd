"""What every model of the plugin shares: one base config, one boolean convention, presets as data.

* ``PluginConfig``: options every model has (``bf16_autocast``); a family's config subclasses it.
* Booleans take a value on the command line (``--bf16-autocast true`` / ``false``; a bare
  ``--bf16-autocast`` means true), as they do in yaml, so every boolean switches both ways and
  no option name inverts its meaning.
* ``register_presets``: arch presets are dicts of option values, registered by one helper; a
  value the user set always wins over the preset, the preset over the config's default.
"""
import argparse
import contextlib
from dataclasses import dataclass, field, fields
from typing import Callable, Dict, Mapping, Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.models import register_model_architecture
from fairseq.utils import safe_getattr

from fairseq_ext.modules.autocast import BF16_AUTOCAST_HELP

_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True,
             "false": False, "no": False, "off": False, "0": False}


def parse_bool(text) -> bool:
    """Command-line booleans: true/false (any case), yes/no, on/off or 1/0."""
    if isinstance(text, bool):
        return text
    value = _BOOLEANS.get(str(text).strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")
    return value


@dataclass
class PluginConfig(FairseqDataclass):
    """Options shared by every model of the plugin."""

    bf16_autocast: bool = field(default=False, metadata={"help": BF16_AUTOCAST_HELP})


def option_fields(config_class):
    """The options of a config dataclass (FairseqDataclass's internal ``_name`` excluded)."""
    return [f for f in fields(config_class) if not f.name.startswith("_")]


def add_config_args(parser, config_class) -> None:
    """One ``--option`` per field of ``config_class``, with no argparse default (presets and
    then the config fill what the user left unset, ``fill_config_defaults``)."""
    for f in option_fields(config_class):
        flag = "--" + f.name.replace("_", "-")
        kwargs = {"help": f.metadata.get("help", "")}
        if f.type is bool:
            kwargs.update(type=parse_bool, nargs="?", const=True, metavar="BOOL")
        elif f.metadata.get("choices"):
            kwargs.update(type=f.type, choices=f.metadata["choices"])
        else:
            kwargs.update(type=f.type, metavar=f.type.__name__.upper())
        parser.add_argument(flag, **kwargs)


def fill_unset(args, values: Mapping) -> None:
    """Options the user left unset (None) take these values; options set win."""
    for key, value in values.items():
        if safe_getattr(args, key) is None:
            setattr(args, key, value)


def fill_config_defaults(args, config_class, preset: Optional[Mapping] = None) -> None:
    """Options the user left unset take the preset's value, then the config's default;
    booleans given as text (``--clap-head True`` in an old command) become booleans."""
    fill_unset(args, preset or {})
    for f in option_fields(config_class):
        value = safe_getattr(args, f.name)
        if value is None:
            setattr(args, f.name, f.default)
        elif f.type is bool:
            setattr(args, f.name, parse_bool(value))


@contextlib.contextmanager
def writable_options(args):
    """Presets and defaults are written into a model's options while it is built: a hydra
    config (struct) is opened for that and closed again; an argparse namespace needs nothing."""
    from omegaconf import OmegaConf

    if not OmegaConf.is_config(args):
        yield args
        return
    OmegaConf.set_struct(args, False)
    try:
        yield args
    finally:
        OmegaConf.set_struct(args, True)


def register_presets(model_name: str, presets: Dict[str, Mapping], fill: Callable,
                     aliases: Optional[Dict[str, str]] = None) -> None:
    """Register every ``arch name -> option values`` preset of a model; ``fill(args, **preset)``
    applies one. ``aliases`` (old name -> current name) keep checkpoints of renamed archs loading."""
    for arch, preset in {**presets, **{old: presets[new] for old, new in (aliases or {}).items()}}.items():
        def apply(args, preset=preset):
            fill(args, **preset)
        apply.__doc__ = f"{arch}: {dict(preset)}"
        register_model_architecture(model_name, arch)(apply)


def check_dictionary_matches(model, state_dict) -> None:
    """A checkpoint loaded with another dictionary fails naming the dictionary, where torch's
    ``size mismatch for ...embed_tokens.weight`` names only a tensor shape."""
    own = model.state_dict()
    for key, value in state_dict.items():
        if key.endswith("embed_tokens.weight") and key in own and own[key].shape[0] != value.shape[0]:
            raise ValueError(
                f"the dictionary does not match the checkpoint: it gives {own[key].shape[0]} embedding rows, the "
                f"checkpoint holds {value.shape[0]} ({key}); load with the dict.txt the model was trained with "
                f"(the data dir of training, or data_name_or_path= a directory holding that dict.txt)")
