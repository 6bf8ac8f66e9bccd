"""Reliability runs of every family on CPU: bf16 autocast against fp32, and long runs.

``precision``: each family's tiny arch trains twice from the same seed on the same batches,
in fp32 and with ``--bf16-autocast true`` (bf16 matmuls on CPU, fp32 weights and loss); both
runs must stay finite and the bf16 loss curve must track fp32's (max |Δ loss| over the last
100 updates, final-loss ratio). ``longrun``: each tiny arch trains for thousands of updates
with validation in between, while the resident memory of the fairseq-train process is read
from /proc at every log record; memory must not grow and tokens/s (fairseq's ``wps``) must not
decay, the failure modes of state carried across batches (TXL caches, kNN memories,
recurrent states). Each writes ``<out-dir>/<kind>.json`` and ``<out-dir>/<kind>.png``;
``render`` turns both into a markdown section for docs/RELIABILITY.md.

Re-run (one thread, as measured; prepares examples/data/pg-sample into data-bin/ if missing)::

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/reliability_runs.py precision --updates 300
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/reliability_runs.py longrun --updates 3000

(the committed figures ran one invocation per family or group in parallel, each with its own
``--out-dir``, joined by ``reliability_runs.py merge <kind> <dir>... --out-dir docs/reliability``;
``--updates`` and the data are recorded in the JSON.)
"""
import argparse
import collections
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "reliability"
DEFAULT_DATA = REPO / "data-bin" / "pg-sample"
SAMPLE = REPO / "examples" / "data" / "pg-sample"
BIN = Path(sys.executable).parent

# family -> (tiny arch, recipe); every recipe is the family's own test command at CPU scale
FAMILIES = {
    "roberta_ext": ("roberta_ext_baseline_tiny", "masked"),
    "glom": ("glom_tiny", "masked"),
    "albert": ("albert_tiny", "masked"),
    "elc_bert": ("elc_bert_tiny", "elc"),
    "txl_lm": ("txl_sliding_window_tiny", "causal"),
    "memorizing_lm": ("memorizing_tiny", "causal"),
    "block_recurrent_lm": ("block_recurrent_tiny", "causal"),
}
CAUSAL_FIRST = ["txl_lm", "memorizing_lm", "block_recurrent_lm", "roberta_ext", "glom", "albert", "elc_bert"]

# pass marks, shown beside the figures
MAX_FINAL_RATIO_DEVIATION = 0.05  # |bf16 final loss / fp32 final loss - 1|
MAX_RSS_GROWTH_MB = 32.0  # RSS growth over the second half of a long run
MIN_TPS_RATIO = 0.8  # tokens per CPU second, last quarter over first quarter
LAST_WINDOW = 100  # updates compared at the end of a precision run
FINAL_MEAN = 10  # updates averaged into a "final loss"

RECIPES = {
    "masked": ["--task", "masked_lm", "--criterion", "masked_lm", "--tokens-per-sample", "64",
               "--sample-break-mode", "none", "--batch-size", "16", "--optimizer", "adam",
               "--lr", "1e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "50"],
    "elc": ["--task", "elc_span_masked_lm", "--criterion", "elc_masked_lm", "--tokens-per-sample", "64",
            "--sample-break-mode", "none", "--batch-size", "16", "--optimizer", "lamb_elc", "--lr", "1e-2",
            "--lr-scheduler", "elc_cosine", "--clip-norm", "2.0"],
    "causal": ["--task", "long_document_lm", "--criterion", "cross_entropy", "--tokens-per-sample", "64",
               "--batch-size", "4", "--optimizer", "adam", "--lr", "1e-2", "--lr-scheduler", "inverse_sqrt",
               "--warmup-updates", "50", "--clip-norm", "1.0"],
}


def train_command(family: str, data: Path, save_dir: Path, updates: int, log_interval: int,
                  validate_interval: int, max_valid_steps: int, bf16: bool) -> List[str]:
    arch, recipe = FAMILIES[family]
    return [str(BIN / "fairseq-train"), str(data), "--user-dir", str(REPO / "fairseq_ext"), "--arch", arch,
            *RECIPES[recipe], "--bf16-autocast", "true" if bf16 else "false", "--cpu", "--num-workers", "0",
            "--max-update", str(updates), "--log-format", "json", "--log-interval", str(log_interval),
            "--validate-interval-updates", str(validate_interval), "--max-valid-steps", str(max_valid_steps),
            "--save-dir", str(save_dir), "--no-save", "--seed", "1",
            # fairseq 0.12 aborted at exit when its prefetching thread was busy (now stopped first by
            # fairseq_ext.data.prefetch_exit); kept so that the recorded runs' commands stay the code's
            "--data-buffer-size", "0"]


def rss_mb(pid: int) -> Optional[float]:
    """Resident memory of ``pid`` in MB (VmRSS of /proc/<pid>/status), None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU time of ``pid`` (/proc/<pid>/stat), None once it has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def parse_record(line: str):
    """(kind, record) of a fairseq ``--log-format json`` line ('train_inner', 'valid', ...), or None."""
    start = line.find("{")
    if start < 0 or " | " not in line[:start]:
        return None
    kind = line[:start].rstrip(" |").rsplit("|", 1)[-1].strip()
    try:
        return kind, json.loads(line[start:])
    except json.JSONDecodeError:
        return None


def run_training(cmd: List[str], timeout: float) -> dict:
    """Run fairseq-train, reading its log as it is written: each train_inner record is kept with
    the process's RSS at that moment, each valid record with its update. Fails with the log tail."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.setdefault("OMP_NUM_THREADS", "1")
    train, valid, lines = [], [], collections.deque(maxlen=60)
    valid_cpu, valid_started = 0.0, None  # CPU seconds spent validating, kept out of training's
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            parsed = ("begin-validation", None) if "begin validation on" in line else parse_record(line)
            if parsed is None:
                continue
            kind, record = parsed
            if kind == "train_inner":
                record["rss_mb"] = rss_mb(proc.pid)
                record["cpu_s"], record["valid_cpu_s"] = cpu_seconds(proc.pid), valid_cpu
                train.append(record)
            elif kind == "valid":
                valid.append(record)
                if valid_started is not None:
                    valid_cpu += cpu_seconds(proc.pid) - valid_started
            elif kind == "begin-validation":
                valid_started = cpu_seconds(proc.pid)
        proc.wait()
    finally:
        timer.cancel()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(lines)}")
    return {"train": train, "valid": valid, "seconds": round(time.time() - started, 1)}


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def clean(x):
    """A float for JSON: None where not finite (strict JSON has no NaN)."""
    x = float(x) if x is not None else None
    return x if x is not None and math.isfinite(x) else None


def curve(run: dict, key: str) -> List[Optional[float]]:
    return [clean(r.get(key)) for r in run["train"]]


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def precision_figures(fp32: dict, bf16: dict) -> dict:
    """How close bf16's loss curve is to fp32's, over the updates both logged."""
    a, b = fp32["loss"], bf16["loss"]
    n = min(len(a), len(b))
    both_finite = all(finite(x) for x in a + b) and all(finite(x) for x in fp32["valid_loss"] + bf16["valid_loss"])
    window = max(1, min(n, LAST_WINDOW // max(1, fp32["log_interval"])))
    out = {"nan_free_fp32": all(finite(x) for x in a + fp32["valid_loss"]),
           "nan_free_bf16": all(finite(x) for x in b + bf16["valid_loss"]), "compared_updates": n}
    if both_finite and n:
        deltas = [abs(x - y) for x, y in zip(a[n - window:n], b[n - window:n])]
        final_a, final_b = mean(a[max(0, n - FINAL_MEAN):n]), mean(b[max(0, n - FINAL_MEAN):n])
        out.update(max_abs_delta_last=max(deltas), mean_abs_delta_last=mean(deltas), last_window_records=window,
                   final_loss_fp32=final_a, final_loss_bf16=final_b, final_loss_ratio=final_b / final_a,
                   first_loss_fp32=a[0], first_loss_bf16=b[0])
        if fp32["valid_loss"] and bf16["valid_loss"]:
            out.update(valid_loss_fp32=fp32["valid_loss"][-1], valid_loss_bf16=bf16["valid_loss"][-1])
    return out


def longrun_figures(run: dict) -> dict:
    """RSS growth (from the first record, and over the second half) and tokens/s early vs late."""
    rss, wps, updates = run["rss_mb"], run["wps"], run["updates"]
    out = {"nan_free": all(finite(x) for x in run["loss"] + run["valid_loss"]) and bool(run["loss"]),
           "records": len(updates), "last_update": updates[-1] if updates else 0}
    if len(rss) >= 2 and all(finite(x) for x in rss):
        half = len(rss) // 2
        out.update(rss_first_mb=rss[0], rss_last_mb=rss[-1], rss_max_mb=max(rss), rss_growth_mb=rss[-1] - rss[0],
                   rss_growth_second_half_mb=rss[-1] - rss[half], rss_slope_mb_per_1k=slope(updates, rss) * 1000)
    for name, values in (("wps", wps), ("cpu_tps", run.get("tokens_per_cpu_s", []))):
        usable = [w for w in values if finite(w)]
        if len(usable) >= 2:
            # the first record holds start-up (first batches, allocator warm-up): quarters after it
            body = usable[1:] if len(usable) >= 5 else usable
            q = max(1, len(body) // 4)
            out.update({f"{name}_first": usable[0], f"{name}_last": usable[-1],
                        f"{name}_first_quarter": mean(body[:q]), f"{name}_last_quarter": mean(body[-q:]),
                        f"{name}_ratio": mean(body[-q:]) / mean(body[:q])})
    return out


def slope(xs, ys) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = mean(xs), mean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def tokens_per_cpu_second(records: List[dict]) -> List[Optional[float]]:
    """Training tokens per CPU second of the process between log records (validation's CPU time
    left out): unlike fairseq's wall-clock wps, it does not fall when other jobs share the CPU."""
    out, previous = [], None
    for r in records:
        if previous is None or r.get("cpu_s") is None or previous.get("cpu_s") is None:
            out.append(None)
        else:
            cpu = (r["cpu_s"] - previous["cpu_s"]) - (r["valid_cpu_s"] - previous["valid_cpu_s"])
            tokens = float(r["wpb"]) * (int(r["num_updates"]) - int(previous["num_updates"]))
            out.append(clean(tokens / cpu) if cpu > 0 else None)
        previous = r
    return out


def summarise(run: dict, log_interval: int) -> dict:
    return {"updates": [int(r["num_updates"]) for r in run["train"]], "loss": curve(run, "loss"),
            "gnorm": curve(run, "gnorm"), "wps": curve(run, "wps"), "rss_mb": curve(run, "rss_mb"),
            "tokens_per_cpu_s": tokens_per_cpu_second(run["train"]),
            "valid_updates": [int(r.get("valid_num_updates", 0)) for r in run["valid"]],
            "valid_loss": [clean(r.get("valid_loss")) for r in run["valid"]],
            "seconds": run["seconds"], "log_interval": log_interval}


def ensure_data(data: Path) -> Path:
    if not (data / "train.idx").exists():
        from fairseq_ext.data import prepare

        prepare.main(["--input", str(SAMPLE), "--out", str(data), "--vocab-size", "4000", "--workers", "1"])
    return data


def machine() -> dict:
    import torch

    return {"threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0), "torch": torch.__version__,
            "cpu_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else None,
            "note": "CPU only; a machine shared with other jobs, so tokens/s is noisy"}


def run_precision(args) -> dict:
    result = {"kind": "precision", "updates": args.updates, "log_interval": args.log_interval,
              "data": str(args.data), "machine": machine(), "families": {}}
    for family in args.families:
        runs = {}
        for name, bf16 in (("fp32", False), ("bf16", True)):
            with tempfile.TemporaryDirectory() as save:
                cmd = train_command(family, args.data, Path(save), args.updates, args.log_interval,
                                    args.validate_interval or args.updates, args.max_valid_steps, bf16)
                print(f"[precision] {family} {name}: {FAMILIES[family][0]}", flush=True)
                runs[name] = summarise(run_training(cmd, args.timeout), args.log_interval)
        result["families"][family] = {"arch": FAMILIES[family][0], "runs": runs,
                                      "figures": precision_figures(runs["fp32"], runs["bf16"]),
                                      "command": shown(cmd)}
        write(result, args.out_dir, "precision")
    plot_precision(result, args.out_dir / "precision.png")
    return result


def run_longrun(args) -> dict:
    result = {"kind": "longrun", "updates": args.updates, "log_interval": args.log_interval,
              "validate_interval": args.validate_interval, "max_valid_steps": args.max_valid_steps,
              "data": str(args.data), "machine": machine(), "families": {}}
    for family in args.families:
        with tempfile.TemporaryDirectory() as save:
            cmd = train_command(family, args.data, Path(save), args.updates, args.log_interval,
                                args.validate_interval, args.max_valid_steps, bf16=False)
            print(f"[longrun] {family}: {FAMILIES[family][0]}", flush=True)
            run = summarise(run_training(cmd, args.timeout), args.log_interval)
        result["families"][family] = {"arch": FAMILIES[family][0], "run": run, "figures": longrun_figures(run),
                                      "command": shown(cmd)}
        write(result, args.out_dir, "longrun")
        plot_longrun(result, args.out_dir / "longrun.png")
    return result


def shown(cmd: List[str]) -> str:
    """The command line with this checkout's paths relative to it (temporary save dir elided)."""
    parts = [os.path.relpath(c, REPO) if c.startswith(str(REPO)) else c for c in cmd]
    parts[parts.index("--save-dir") + 1] = "<tmp>"
    return " ".join(parts)


def write(result: dict, out_dir: Path, kind: str):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{kind}.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")


def _grid(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, axes.flat


def plot_precision(result: dict, path: Path):
    families = result["families"]
    plt, fig, axes = _grid(len(families))
    for ax, (family, entry) in zip(axes, families.items()):
        for name, style in (("fp32", "-"), ("bf16", "--")):
            run = entry["runs"][name]
            ax.plot(run["updates"], [x if x is not None else float("nan") for x in run["loss"]], style,
                    label=name, linewidth=1)
        ax.set_title(f"{family} ({entry['arch']})", fontsize=9)
        ax.set_xlabel("update")
        ax.set_ylabel("train loss (bits)")
        ax.legend(fontsize=8)
    fig.suptitle("bf16 autocast vs fp32 on CPU, same seed and batches")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_longrun(result: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rss_ax, wps_ax, tps_ax, loss_ax) = plt.subplots(1, 4, figsize=(19, 4))
    for family, entry in result["families"].items():
        run = entry["run"]
        rss_ax.plot(run["updates"], run["rss_mb"], label=family, linewidth=1)
        wps_ax.plot(run["updates"], run["wps"], label=family, linewidth=1)
        tps = [x if x is not None else float("nan") for x in run.get("tokens_per_cpu_s", [])]
        if tps:
            tps_ax.plot(run["updates"], tps, label=family, linewidth=1)
        loss_ax.plot(run["valid_updates"], run["valid_loss"], "o-", label=family, linewidth=1, markersize=3)
    for ax, label in ((rss_ax, "RSS of fairseq-train (MB)"), (wps_ax, "wall-clock tokens/s (wps)"),
                      (tps_ax, "tokens per CPU second"), (loss_ax, "valid loss (bits)")):
        ax.set_xlabel("update")
        ax.set_ylabel(label)
    tps_ax.set_yscale("log")
    wps_ax.set_yscale("log")
    rss_ax.legend(fontsize=7)
    fig.suptitle(f"long runs on CPU (fp32, {result['machine']['threads'] or '?'} thread(s)), "
                 f"sampled every {result['log_interval']} updates")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(x, digits=3):
    return f"{x:.{digits}f}" if finite(x) else "—"


def precision_passes(figures: dict) -> bool:
    return (figures.get("nan_free_fp32") is True and figures.get("nan_free_bf16") is True
            and finite(figures.get("final_loss_ratio"))
            and abs(figures["final_loss_ratio"] - 1) <= MAX_FINAL_RATIO_DEVIATION)


def longrun_passes(figures: dict) -> bool:
    return (figures.get("nan_free") is True and finite(figures.get("rss_growth_second_half_mb"))
            and figures["rss_growth_second_half_mb"] <= MAX_RSS_GROWTH_MB
            and finite(figures.get(throughput_key(figures)))
            and figures[throughput_key(figures)] >= MIN_TPS_RATIO)


def throughput_key(figures: dict) -> str:
    """Judge tokens per CPU second where measured, else fairseq's wall-clock wps."""
    return "cpu_tps_ratio" if "cpu_tps_ratio" in figures else "wps_ratio"


def _recheck_precision(entry: dict) -> dict:
    """Figures recomputed from the curves, so a hand-edited or stale flag cannot hide a NaN."""
    figures = dict(entry.get("figures", {}))
    for name in ("fp32", "bf16"):
        run = entry.get("runs", {}).get(name, {})
        values = list(run.get("loss", [])) + list(run.get("valid_loss", []))
        if not values or not all(finite(x) for x in values):
            figures[f"nan_free_{name}"] = False
    return figures


def _recheck_longrun(entry: dict) -> dict:
    figures = dict(entry.get("figures", {}))
    run = entry.get("run", {})
    values = list(run.get("loss", [])) + list(run.get("valid_loss", []))
    if not values or not all(finite(x) for x in values):
        figures["nan_free"] = False
    return figures


def render_precision(result: dict, image: str) -> str:
    rows = ["| family | arch | NaN/inf-free (fp32 / bf16) | max abs Δ loss, last 100 updates | mean abs Δ | "
            f"final loss fp32 / bf16 (mean of last {FINAL_MEAN}) | ratio | status |",
            "|---|---|---|---|---|---|---|---|"]
    for family, entry in result["families"].items():
        f = _recheck_precision(entry)
        yes = lambda ok: "yes" if ok else "**no**"
        rows.append(f"| {family} | `{entry['arch']}` | {yes(f.get('nan_free_fp32'))} / {yes(f.get('nan_free_bf16'))} "
                    f"| {_fmt(f.get('max_abs_delta_last'), 4)} | {_fmt(f.get('mean_abs_delta_last'), 4)} "
                    f"| {_fmt(f.get('final_loss_fp32'))} / {_fmt(f.get('final_loss_bf16'))} "
                    f"| {_fmt(f.get('final_loss_ratio'), 4)} | {'pass' if precision_passes(f) else '**FAIL**'} |")
    return "\n".join([
        f"### bf16 autocast vs fp32 ({result['updates']} updates per family, CPU)", "",
        "Each family's tiny arch trained twice from the same seed on the same batches of pg-sample: fp32, "
        "and `--bf16-autocast true` (bf16 matmuls on CPU, fp32 weights and fp32 loss). Loss in bits, "
        f"per update. Pass: no NaN/inf in either run and the final-loss ratio within "
        f"1 ± {MAX_FINAL_RATIO_DEVIATION}. fairseq logs losses to 3 decimals, so |Δ| below 0.001 reads as 0.",
        "", *rows, "", f"![bf16 vs fp32 loss curves]({image})", ""])


def render_longrun(result: dict, image: str) -> str:
    rows = ["| family | arch | updates | NaN/inf-free | RSS first → last (MB) | RSS growth, whole / second half (MB) "
            "| RSS slope (MB per 1k updates) | wps (wall) first → last record | tokens per CPU-s first → last "
            "| throughput last / first quarter | status |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for family, entry in result["families"].items():
        f = _recheck_longrun(entry)
        rows.append(f"| {family} | `{entry['arch']}` | {f.get('last_update', 0)} | {'yes' if f.get('nan_free') else '**no**'} "
                    f"| {_fmt(f.get('rss_first_mb'), 0)} → {_fmt(f.get('rss_last_mb'), 0)} "
                    f"| {_fmt(f.get('rss_growth_mb'), 1)} / {_fmt(f.get('rss_growth_second_half_mb'), 1)} "
                    f"| {_fmt(f.get('rss_slope_mb_per_1k'), 2)} | {_fmt(f.get('wps_first'), 0)} → {_fmt(f.get('wps_last'), 0)} "
                    f"| {_fmt(f.get('cpu_tps_first'), 0)} → {_fmt(f.get('cpu_tps_last'), 0)} "
                    f"| {_fmt(f.get(throughput_key(f)), 2)} | {'pass' if longrun_passes(f) else '**FAIL**'} |")
    return "\n".join([
        "### Long runs (CPU, fp32)", "",
        f"Each family's tiny arch trained on pg-sample ({settings_text(result)}); at each record the RSS of the "
        "fairseq-train process (VmRSS) and tokens/s were read. Pass: no NaN/inf, RSS growth over the second half ≤ "
        f"{MAX_RSS_GROWTH_MB:.0f} MB, training tokens per CPU second of the process (validation's CPU time left "
        f"out; /proc/<pid>/stat) in the last quarter ≥ {MIN_TPS_RATIO} × the first quarter (after the first "
        "record, which holds start-up). The machine is shared with other jobs, so fairseq's wall-clock wps "
        "moves with their load and is shown, not judged.", "",
        *rows, "", f"![RSS, tokens/s and valid loss over the long runs]({image})", ""])


def render(out_dir=DEFAULT_OUT, link_prefix: str = "reliability/", results: Optional[Dict[str, dict]] = None) -> str:
    """The markdown section of both measurements: ``results`` ({"precision": ..., "longrun": ...}), or
    the JSON files in ``out_dir``; images linked as ``link_prefix + <kind>.png``."""
    if results is None:
        results = {kind: json.loads((Path(out_dir) / f"{kind}.json").read_text())
                   for kind in ("precision", "longrun") if (Path(out_dir) / f"{kind}.json").exists()}
    parts = ["## Precision and long runs", "",
             "Measured by `scripts/reliability_runs.py` (its docstring has the command to re-run).", ""]
    if "precision" in results:
        parts.append(render_precision(results["precision"], link_prefix + "precision.png"))
    if "longrun" in results:
        parts.append(render_longrun(results["longrun"], link_prefix + "longrun.png"))
    if not results:
        parts.append("Not measured yet.\n")
    return "\n".join(parts)


SETTINGS = ("updates", "log_interval", "validate_interval", "max_valid_steps")


def settings_text(result: dict) -> str:
    """'every V updates (records every L)' per distinct setting, naming the families when they differ."""
    groups = {}
    for family, entry in result["families"].items():
        own = entry.get("settings", result)
        groups.setdefault((own.get("validate_interval"), own.get("log_interval")), []).append(family)
    parts = [f"validation every {v} and a record every {l} updates"
             + (f" ({', '.join(fams)})" if len(groups) > 1 else "") for (v, l), fams in groups.items()]
    return "; ".join(parts)


def merge(kind: str, sources: List[Path], out_dir: Path) -> dict:
    """One ``<kind>.json`` + PNG from runs made in parallel (one invocation per family or group),
    families in the usual order; the settings of the first source are kept, updates per family."""
    parts = [json.loads((Path(d) / f"{kind}.json").read_text()) for d in sources]
    families = {f: dict(e, settings={k: part.get(k) for k in SETTINGS if k in part})
                for part in parts for f, e in part["families"].items()}
    result = dict(parts[0], families={f: families[f] for f in CAUSAL_FIRST if f in families})
    result["updates"] = max(p["updates"] for p in parts)
    write(result, out_dir, kind)
    (plot_precision if kind == "precision" else plot_longrun)(result, out_dir / f"{kind}.png")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, updates, log_interval, validate in (("precision", 300, 1, 0), ("longrun", 3000, 100, 500)):
        p = sub.add_parser(name)
        p.add_argument("--families", default=",".join(CAUSAL_FIRST),
                       help=f"comma-separated, run in this order (of {', '.join(FAMILIES)})")
        p.add_argument("--updates", type=int, default=updates)
        p.add_argument("--log-interval", type=int, default=log_interval,
                       help="updates between log records (each record samples RSS and tokens/s)")
        p.add_argument("--validate-interval", type=int, default=validate,
                       help="updates between validations (0: at the end only)")
        p.add_argument("--max-valid-steps", type=int, default=20, help="batches per validation")
        p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
        p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="prepared data (made from pg-sample if missing)")
        p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per fairseq-train run")
    sub.add_parser("render").add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    p = sub.add_parser("merge", help="combine <kind>.json of runs made in parallel into --out-dir")
    p.add_argument("kind", choices=["precision", "longrun"])
    p.add_argument("sources", type=Path, nargs="+", help="out-dirs of the separate runs")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.command == "render":
        print(render(args.out_dir))
        return
    if args.command == "merge":
        merge(args.kind, args.sources, args.out_dir)
        print(render(args.out_dir))
        return
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        parser.error(f"--families: unknown {unknown}; known: {', '.join(FAMILIES)}")
    if args.command == "longrun" and not args.validate_interval:
        args.validate_interval = max(1, args.updates // 6)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    ensure_data(args.data)
    result = (run_precision if args.command == "precision" else run_longrun)(args)
    print(render(args.out_dir, results={args.command: result}))


if __name__ == "__main__":
    main()
