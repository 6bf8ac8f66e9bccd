"""Side-by-side training of several configurations through stock fairseq-train.

Each configuration of a spec file is trained on the same prepared data for the same budget
(``--max-update`` or ``--stop-time-hours``) by ``fairseq-train`` or ``fairseq-hydra-train`` in a
subprocess, with ``--log-format json``; fairseq's own log records give the curves. Writes a
markdown table, one PNG with validation loss against updates, wall time and FLOPs (one curve
per configuration), and ``benchmarks/results/<name>.json`` for docs/RESULTS.md.

Interrupted comparisons resume: a run with a done-marker (``DONE.json``) for the same budget is
not retrained; a half-done run restarts through fairseq's own ``checkpoint_last.pt``.

A spec entry ``blimp: {path: ../shared/data/blimp-dev, limit: N}`` (masked LMs) also scores each
run's ``checkpoint_last.pt`` on BLiMP with ``fairseq_ext.eval.blimp`` (pseudo-log-likelihood) and
adds the accuracy to its row; the score is cached in the run dir for that checkpoint and setting.
A spec entry ``books: {split: test, batch_size: 4, args: [--tokens-per-sample, "512", --cpu]}``
(long-document LMs, task ``long_document_lm``) adds per-book and overall perplexity of each run's
``checkpoint_last.pt`` from ``fairseq_ext.eval.books`` (stock eval_lm, state carried per book).

    python benchmarks/compare.py --spec benchmarks/specs/pg_mini_roberta_small_cpu.yaml --max-update 150
"""
import argparse
import json
import logging
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # so the script runs from anywhere, like fairseq's own scripts

from benchmarks import results  # noqa: E402
from benchmarks.throughput import machine_info, worker_env  # noqa: E402

BIN = Path(sys.executable).parent
# "... | INFO | valid | {json}" (fairseq-train) or "[...][valid][INFO] - {json}" (fairseq-hydra-train)
RECORD = re.compile(r"(?:\| |\[)(train_inner|train|valid)(?: \| |\]\[\w+\] - )(\{.*\})\s*$")
RESTORED = re.compile(r"[Ll]oaded checkpoint .* \(epoch \d+ @ (\d+) updates\)")
FLOPS_CRITERIA = {"masked_lm": "masked_lm_flops", "cross_entropy": "cross_entropy_flops"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", required=True, help="JSON or YAML file: data, common args, runs (see docs/families/benchmarks.md)")
    p.add_argument("--data", help="prepared data dir (overrides the spec's 'data')")
    p.add_argument("--name", help="result name (default: the spec's 'name', else the spec file's stem)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-update", type=int, help="updates per run (overrides the spec's budget)")
    budget.add_argument("--stop-time-hours", type=float, help="training hours per run (overrides the spec's budget)")
    p.add_argument("--work-dir", help="run dirs with checkpoints and logs (default checkpoints/compare/<name>)")
    p.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results"), help="where JSON and PNG go")
    p.add_argument("--timeout", type=float, help="seconds per fairseq run before it is stopped (resume later)")
    p.add_argument("--note", help="a remark shown with the result in docs/RESULTS.md (e.g. shared CPU)")
    p.add_argument("--no-docs", action="store_true", help="do not regenerate docs/RESULTS.md")
    return p.parse_args(argv)


def load_spec(path: Path) -> dict:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        from omegaconf import OmegaConf

        spec = OmegaConf.to_container(OmegaConf.create(text), resolve=True)
    else:
        spec = json.loads(text)
    names = [r.get("name") for r in spec.get("runs", [])]
    if not names or None in names or len(set(names)) != len(names):
        raise ValueError(f"{path}: 'runs' must be a non-empty list of entries with unique 'name's")
    for run in spec["runs"]:
        if ("args" in run) == ("hydra" in run):
            raise ValueError(f"{path}: run {run['name']!r} needs exactly one of 'args' or 'hydra'")
    if spec.get("blimp") is not None:
        blimp_path(spec["blimp"])  # a wrong path fails here, not after hours of training
    return spec


def flag_value(argv: List[str], flag: str) -> Optional[str]:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def train_command(run: dict, spec: dict, data: str, budget: Dict[str, float], save_dir: Path) -> List[str]:
    """The fairseq command line of one run: its args (or hydra config) + data, budget, logging."""
    if "hydra" in run:
        h = run["hydra"]
        overrides = list(spec.get("hydra_overrides", [])) + list(h.get("overrides", []))
        overrides += [f"task.data={data}", f"common.user_dir={REPO / 'fairseq_ext'}",
                      "common.log_format=json", f"checkpoint.save_dir={save_dir}",
                      f"hydra.run.dir={save_dir.parent / 'hydra'}"]
        overrides += [f"optimization.{k}={v}" for k, v in budget.items()]
        return [str(BIN / "fairseq-hydra-train"), "--config-dir", str(REPO / h["config_dir"]),
                "--config-name", h["config_name"], *overrides]
    argv = [str(a) for a in list(spec.get("common", [])) + list(run["args"])]
    criterion = flag_value(argv, "--criterion")
    if criterion in FLOPS_CRITERIA:  # same loss, plus FLOPs in the logs
        argv[argv.index("--criterion") + 1] = FLOPS_CRITERIA[criterion]
    for key, value in budget.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    if "--user-dir" not in argv:
        argv += ["--user-dir", str(REPO / "fairseq_ext")]
    return [str(BIN / "fairseq-train"), data, *argv, "--log-format", "json", "--save-dir", str(save_dir)]


def read_records(log_text: str) -> Dict[str, List[dict]]:
    """fairseq's JSON log records by kind. When a restart restores a checkpoint ("Loaded
    checkpoint ... @ N updates"), records logged past update N by the interrupted attempt are
    dropped: the resumed run logs those updates again. fairseq restarts its ``wall`` clock on a
    restore, so later records get the wall time reached at update N added: wall time is the
    sum over attempts, without work lost to the interruption."""
    out: Dict[str, List[dict]] = {"train_inner": [], "train": [], "valid": []}
    wall_offset = 0.0
    for line in log_text.splitlines():
        restored = RESTORED.search(line)
        if restored:
            for kind in out:
                out[kind] = [r for r in out[kind] if r["num_updates"] <= int(restored.group(1))]
            wall_offset = max([r.get("wall", 0.0) for r in out["train_inner"] + out["train"]] or [0.0])
            continue
        m = RECORD.search(line)
        if not m:
            continue
        kind, rec = m.group(1), json.loads(m.group(2))
        if kind != "train_inner":  # epoch summaries prefix their keys with the tag
            rec = {k[len(kind) + 1:] if k.startswith(kind + "_") else k: v for k, v in rec.items()}
        rec = {k: float(v) for k, v in rec.items() if isinstance(v, (int, float, str)) and _is_number(v)}
        if "wall" in rec:
            rec["wall"] += wall_offset
        out[kind].append(rec)
    return out


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def curves(records: Dict[str, List[dict]], flops_per_token: Optional[float] = None) -> dict:
    """Validation loss against updates, wall seconds and cumulative analytic FLOPs.

    Training records give (updates, wall, FLOPs) points — FLOPs accumulate ``gflop`` (mean
    GFLOPs per update over each log interval, logged by the *_flops criterions) × updates, or,
    when the log has no ``gflop``, ``flops_per_token`` × ``wpb`` (tokens per update) × updates —
    and each validation is placed on them by linear interpolation in updates."""
    import numpy as np

    train = sorted(records["train_inner"] + records["train"], key=lambda r: r["num_updates"])
    ups, walls, flops, total, last_u = [0.0], [0.0], [0.0], 0.0, 0.0
    logged = any("gflop" in r for r in train)
    has_flops = logged or flops_per_token is not None
    for r in train:
        if r["num_updates"] <= last_u or "wall" not in r:
            continue
        per_update = r.get("gflop", 0.0) * 1e9 if logged else (flops_per_token or 0.0) * r.get("wpb", 0.0)
        total += per_update * (r["num_updates"] - last_u)
        ups.append(r["num_updates"])
        walls.append(r["wall"])
        flops.append(total)
        last_u = r["num_updates"]
    valid = records["valid"]
    u = np.array([r["num_updates"] for r in valid], dtype=float)
    return {
        "updates": u.tolist(),
        "wall_s": np.interp(u, ups, walls).tolist(),
        "flops": np.interp(u, ups, flops).tolist() if has_flops else None,
        "valid_loss": [r.get("loss") for r in valid],
        "valid_ppl": [r.get("ppl") for r in valid],
        "total_flops": total if has_flops else None,
    }


def checkpoint_flops_per_token(checkpoint: Path, data: str) -> Optional[float]:
    """Analytic training FLOPs per token of a trained run, from its model and tokens_per_sample
    (for runs whose criterion does not log ``gflop``, e.g. a hydra recipe's plain masked_lm)."""
    from fairseq import checkpoint_utils

    import fairseq_ext  # noqa: F401  (registers the plugin's models)
    from fairseq_ext.flops import model_flops_per_token

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)], arg_overrides={"data": data})
    mask_prob = getattr(cfg.task, "mask_prob", None) if hasattr(task, "mask_idx") else None
    return model_flops_per_token(models[0], cfg.task.tokens_per_sample, mask_prob or 1.0)


def summarize(name: str, argv: List[str], log_text: str, checkpoint: Optional[Path] = None,
              data: str = "") -> dict:
    """One run's row: final figures from fairseq's records, and its curves."""
    rec = read_records(log_text)
    last_train = (rec["train"] or rec["train_inner"] or [{}])[-1]
    last_inner = (rec["train_inner"] or [{}])[-1]
    last_valid = (rec["valid"] or [{}])[-1]
    logged = any("gflop" in r for r in rec["train_inner"] + rec["train"])
    fpt = None if logged or checkpoint is None or not checkpoint.exists() else checkpoint_flops_per_token(checkpoint, data)
    c = curves(rec, fpt)
    updates = max([r["num_updates"] for k in rec for r in rec[k]] or [0])
    losses = [v for v in c["valid_loss"] if v is not None]
    return {
        "name": name, "command": " ".join(shlex.quote(a) for a in argv), "updates": updates,
        "wall_s": last_train.get("wall", last_inner.get("wall")),
        "train_loss": last_inner.get("loss", last_train.get("loss")), "valid_loss": last_valid.get("loss"),
        "valid_ppl": last_valid.get("ppl"),
        "best_valid_loss": min(losses) if losses else None,
        "wps": last_train.get("wps", last_inner.get("wps")), "total_flops": c["total_flops"], "curve": c,
    }


def plot(runs: List[dict], path: Path, title: str) -> Path:
    """Validation loss against updates, wall time and FLOPs; one curve per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (key, label) in zip(axes, (("updates", "updates"), ("wall_s", "wall time (s)"),
                                       ("flops", "training FLOPs (analytic)"))):
        for run in runs:
            c = run["curve"]
            if c[key] is not None and c["updates"]:
                ax.plot(c[key], c["valid_loss"], marker="o", markersize=3, label=run["name"])
        ax.set_xlabel(label)
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_one(run: dict, spec: dict, data: str, budget: Dict[str, float], run_dir: Path,
            timeout: Optional[float]) -> dict:
    """Train one configuration unless its done-marker says it finished this budget; its row
    is always read back from its fairseq log (every attempt appended to ``train.log``)."""
    done, log = run_dir / "DONE.json", run_dir / "train.log"
    argv = train_command(run, spec, data, budget, run_dir / "checkpoints")
    if _finished(done, log, argv, budget):
        print(f"[compare] {run['name']}: finished earlier, not retrained", file=sys.stderr, flush=True)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        print(f"[compare] {run['name']}: {' '.join(argv)}", file=sys.stderr, flush=True)
        with open(log, "a") as f:
            f.write(f"=== compare.py {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n")
            f.flush()
            proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, cwd=run_dir,
                                  env=worker_env(), timeout=timeout)
        if proc.returncode != 0:
            raise SystemExit(f"{run['name']} failed ({proc.returncode}); see {log}; re-run to resume")
    done.write_text(json.dumps({"budget": budget, "command": argv}, indent=1) + "\n")
    checkpoint = run_dir / "checkpoints" / "checkpoint_last.pt"
    row = summarize(run["name"], argv, log.read_text(), checkpoint, data)
    if spec.get("blimp"):
        row["blimp"] = blimp_accuracy(checkpoint, data, spec["blimp"], run_dir / "blimp.json")
    if spec.get("books"):
        row["books"] = book_perplexity(checkpoint, data, spec["books"], run_dir / "books.json")
    return row


def blimp_path(blimp: dict) -> Path:
    """The spec's ``blimp.path`` (a .jsonl file or a directory of them; relative to the repo)."""
    if not isinstance(blimp, dict) or "path" not in blimp:
        raise ValueError(f"spec 'blimp' must be a mapping with 'path' (and optional 'limit'), got {blimp!r}")
    path = Path(blimp["path"])
    path = path if path.is_absolute() else REPO / path
    if not path.exists():
        raise FileNotFoundError(f"spec 'blimp.path': {path} does not exist")
    return path


def blimp_accuracy(checkpoint: Path, data: str, blimp: dict, out: Path) -> dict:
    """BLiMP accuracy (overall, per field and per paradigm) of one trained run, scored in a
    subprocess by ``fairseq_ext.eval.blimp``."""
    path = blimp_path(blimp)
    argv = [sys.executable, "-m", "fairseq_ext.eval.blimp", "--checkpoint-dir", str(checkpoint.parent),
            "--checkpoint", checkpoint.name, "--data-dir", data, "--blimp", str(path), "--out", str(out)]
    if blimp.get("limit"):
        argv += ["--limit", str(blimp["limit"])]
    return cached_evaluation("BLiMP", argv, checkpoint, out)


def book_perplexity(checkpoint: Path, data: str, books: dict, out: Path) -> dict:
    """Per-book and overall perplexity of one trained long-document LM on ``books.split``, by
    ``fairseq_ext.eval.books`` (stock eval_lm per book) in a subprocess."""
    argv = [sys.executable, "-m", "fairseq_ext.eval.books", data, "--path", str(checkpoint),
            "--user-dir", str(REPO / "fairseq_ext"), "--task", "long_document_lm",
            "--gen-subset", str(books.get("split", "test")), "--batch-size", str(books.get("batch_size", 1)),
            "--json-out", str(out)] + [str(a) for a in books.get("args", [])]
    return cached_evaluation("books", argv, checkpoint, out)


def cached_evaluation(what: str, argv: List[str], checkpoint: Path, out: Path) -> dict:
    """Run an evaluation command writing JSON to ``out``; reused while the command and the
    checkpoint are the same."""
    key = {"command": argv[1:], "checkpoint_mtime": checkpoint.stat().st_mtime}
    marker = out.with_suffix(".key.json")
    if not (out.exists() and marker.exists() and json.loads(marker.read_text()) == key):
        print(f"[compare] {what}: {' '.join(argv)}", file=sys.stderr, flush=True)
        proc = subprocess.run(argv, cwd=REPO, env=worker_env(), capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{what} evaluation of {checkpoint} failed:\n{proc.stderr[-3000:]}")
        marker.write_text(json.dumps(key) + "\n")
    return json.loads(out.read_text())


def _finished(done: Path, log: Path, argv: List[str], budget: Dict[str, float]) -> bool:
    """Done for this budget: by the marker, or by a log whose last attempt ran this very
    command to fairseq's "done training" (stopped before writing the marker). Restarting a
    finished fairseq run is not harmless: it trains one more update past --max-update."""
    if done.exists():
        return json.loads(done.read_text()).get("budget") == budget
    if not log.exists():
        return False
    header = "=== compare.py "
    last = log.read_text().rsplit(header, 1)[-1]
    return last.split("\n", 1)[0].endswith(" ".join(argv)) and "done training" in last


def main(argv=None) -> dict:
    args = parse_args(argv)
    spec_path = Path(args.spec)
    spec = load_spec(spec_path)
    name = args.name or spec.get("name") or spec_path.stem
    data = args.data or spec.get("data")
    if not data:
        raise ValueError("no data dir: give --data or 'data' in the spec")
    budget = ({"max_update": args.max_update} if args.max_update else
              {"stop_time_hours": args.stop_time_hours} if args.stop_time_hours else spec.get("budget"))
    if not budget or not set(budget) <= {"max_update", "stop_time_hours"}:
        raise ValueError(f"budget {budget!r}: give --max-update / --stop-time-hours, or 'budget' in the "
                         "spec with max_update and/or stop_time_hours")
    work = Path(args.work_dir or REPO / "checkpoints" / "compare" / name)
    runs = [run_one(r, spec, str(data), budget, work / r["name"], args.timeout) for r in spec["runs"]]
    results_dir = Path(args.results_dir)
    png = plot(runs, results_dir / f"{name}.png", f"{name}: validation loss")
    result = {
        "kind": "compare", "name": name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/compare.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "machine": machine_info("cuda" if _has_cuda() else "cpu"),
        "note": args.note or spec.get("note"), "spec": spec, "budget": budget, "data": str(data), "runs": runs,
        "plots": [str(png.relative_to(REPO)) if png.is_relative_to(REPO) else str(png)],
    }
    (results_dir / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(results.compare_table(result))
    if not args.no_docs:
        results.write_results_md()
    return result


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
