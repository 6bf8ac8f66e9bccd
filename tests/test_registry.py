"""Every name fairseq_ext registers is its own, whichever way the plugin is loaded."""
import re
from pathlib import Path

import pytest

from helpers import REPO, USER_DIR, run_python

REGISTER = re.compile(r"@register_(model_architecture|model|task|criterion|optimizer|lr_scheduler|bpe)\(\s*"
                      r"(?:\"[\w-]+\",\s*)?\"([\w-]+)\"")


def registered_in_source():
    """(kind, name) for every @register_* decorator in the plugin's source."""
    found = []
    for path in sorted((REPO / "fairseq_ext").rglob("*.py")):
        found += REGISTER.findall(path.read_text())
    return found


def test_every_registered_name_resolves_to_a_plugin_class():
    import fairseq_ext  # noqa: F401
    from fairseq import registry
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY
    from fairseq.tasks import TASK_REGISTRY

    tables = {"model": MODEL_REGISTRY, "model_architecture": ARCH_MODEL_REGISTRY, "task": TASK_REGISTRY,
              **{kind: registry.REGISTRIES[kind]["registry"] for kind in ["criterion", "optimizer", "lr_scheduler", "bpe"]}}
    names = registered_in_source()
    assert ("model", "roberta_ext") in names
    for kind, name in names:
        registered = tables[kind][name]
        # fairseq's register_model silently keeps an existing class for a taken name
        assert registered.__module__.startswith("fairseq_ext."), f"{kind} {name!r} is {registered}"


@pytest.mark.parametrize("load", ["import fairseq_ext",
                                  f"from fairseq import utils; from argparse import Namespace; utils.import_user_module(Namespace(user_dir={USER_DIR!r}))"])
def test_import_and_user_dir_register_the_same_names(load):
    code = f"""
from fairseq.models import ARCH_MODEL_REGISTRY
before = set(ARCH_MODEL_REGISTRY)
{load}
print(sorted(set(ARCH_MODEL_REGISTRY) - before))
"""
    added = eval(run_python(code, cwd=Path("/")).stdout.strip().splitlines()[-1])
    assert added == sorted({name for kind, name in registered_in_source() if kind == "model_architecture"})
