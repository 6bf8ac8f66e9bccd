"""Every name fairseq_ext registers is its own, whichever way the plugin is loaded.

fairseq's ``register_model`` silently keeps the existing class when a name is taken (the other
registries raise), so a clash would train stock fairseq code under our name.
"""
import json
import re
from pathlib import Path

import pytest

from helpers import REPO, USER_DIR, run_python

REGISTER_MODEL = re.compile(r"register_model\(\s*\"([\w-]+)\"")

SNAPSHOT = """
import json
from fairseq import registry
from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY
from fairseq.tasks import TASK_REGISTRY
import fairseq.criterions, fairseq.optim, fairseq.optim.lr_scheduler, fairseq.data.encoders
tables = {"model": MODEL_REGISTRY, "arch": ARCH_MODEL_REGISTRY, "task": TASK_REGISTRY,
          **{k: v["registry"] for k, v in registry.REGISTRIES.items()}}
def snapshot():
    return {kind: {name: getattr(obj, "__module__", "") for name, obj in table.items()} for kind, table in tables.items()}
before = snapshot()
LOAD
after = snapshot()
print(json.dumps({kind: {n: m for n, m in after[kind].items() if n not in before[kind]} for kind in after}))
"""

LOADS = {"import": "import fairseq_ext",
         "user_dir": f"from argparse import Namespace\nfrom fairseq import utils\nutils.import_user_module(Namespace(user_dir={USER_DIR!r}))"}


def added_names(how):
    out = run_python(SNAPSHOT.replace("LOAD", LOADS[how]), cwd=Path("/")).stdout.strip().splitlines()[-1]
    return json.loads(out)


@pytest.fixture(scope="module")
def added():
    return {how: added_names(how) for how in LOADS}


def test_import_and_user_dir_register_the_same_names(added):
    assert added["import"] == added["user_dir"]
    assert "roberta_ext" in added["import"]["model"] and "roberta_ext_baseline_small" in added["import"]["arch"]


def test_every_added_name_belongs_to_the_plugin(added):
    for kind, names in added["import"].items():
        for name, module in names.items():
            assert module.startswith("fairseq_ext."), f"{kind} {name!r} registered from {module}"


def test_every_register_model_call_took_effect(added):
    """A model name fairseq already had would be missing from what the import added."""
    declared = {name for path in (REPO / "fairseq_ext").rglob("*.py") for name in REGISTER_MODEL.findall(path.read_text())}
    assert declared and declared <= set(added["import"]["model"])
