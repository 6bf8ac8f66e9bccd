"""What the golden-tensor scripts share: importing one source file of an original checkout as a
module, recording where it came from, and moving parameters off their (often zero) init so
that every weight matters in the comparison (tests/golden/README.md)."""
import hashlib
import importlib.util
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch


def load_source(checkout: Path, relative_path: str, module_name: str):
    """Execute ``checkout/relative_path`` as a fresh module named ``module_name`` (registered in
    sys.modules so that relative imports and dataclasses inside it resolve)."""
    path = Path(checkout) / relative_path
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {checkout} a checkout of the right commit?")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def provenance(repo: str, commit: str, checkout: Path, files) -> dict:
    """Repo, commit, the files used (with their sha256, so a wrong checkout shows) and the date."""
    return {"repo": repo, "commit": commit,
            "files": {f: file_sha256(Path(checkout) / f) for f in files},
            "torch": str(torch.__version__),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}


def check_commit(checkout: Path, commit: str) -> None:
    """If the checkout is a git work tree, its HEAD must be ``commit`` (git archive exports have
    no .git; their file hashes are recorded instead)."""
    if not (Path(checkout) / ".git").exists():
        return
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    if head != commit:
        raise ValueError(f"{checkout} is at {head}, expected {commit}")


@torch.no_grad()
def perturb_(module: torch.nn.Module, seed: int, scale: float = 0.2, matrices: bool = False) -> None:
    """Add N(0, scale²) noise to every parameter of at most one dimension (biases, LayerNorm
    gains, layer weights α, β), which start at 0 or 1: zero biases would hide a mismatch in them;
    with ``matrices`` to the weight matrices too (for inits as small as N(0, 0.02))."""
    gen = torch.Generator().manual_seed(seed)
    for _, param in sorted(module.named_parameters(), key=lambda item: item[0]):
        if matrices or param.dim() <= 1:
            param.add_(torch.randn(param.shape, generator=gen) * scale)


def shared_state(state_dicts: dict) -> dict:
    """Make equal tensors of several state dicts one object, so torch.save stores them once."""
    seen = {}
    out = {}
    for key, state in state_dicts.items():
        out[key] = {}
        for name, tensor in state.items():
            tensor = tensor.detach().clone()
            for other in seen.get((name, tuple(tensor.shape)), []):
                if torch.equal(other, tensor):
                    tensor = other
                    break
            else:
                seen.setdefault((name, tuple(tensor.shape)), []).append(tensor)
            out[key][name] = tensor
    return out
