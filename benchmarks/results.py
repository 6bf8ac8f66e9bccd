"""Markdown tables of benchmark results, and docs/RESULTS.md regenerated from every JSON file.

docs/RESULTS.md is never edited by hand: ``python -m benchmarks.results`` (or any benchmark
run) rewrites it from ``benchmarks/results/*.json``.
"""
import json
import re
import platform
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
RESULTS_MD = REPO / "docs" / "RESULTS.md"
SUMMARY_MD = RESULTS_DIR / "summary.md"
# an absolute path up to a data-bin/ dir (where a run found its data on its machine) -> data-bin/
MACHINE_DATA_PATH = re.compile(r"(?<![\w.])/[^\s`'\"]*?/(?=data-bin/)")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _num(x: Optional[float], fmt: str = "{:,.0f}") -> str:
    return "–" if x is None else fmt.format(x)


def _ratio(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def throughput_table(result: dict) -> str:
    """One row per arch: medians with their min–max over repeats, and ratios to the first arch."""
    rows = ["| arch | precision | tokens/s (min–max) | ms/update (min–max) | peak mem MB | params | "
            "train GFLOP/token | MFU | tokens/s × | ms/update × | mem × |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        arch = _run_name(r)
        lo, hi = r["tokens_per_s_range"]
        mlo, mhi = r["ms_per_update_range"]
        fpt = r["flops_per_token"]
        rows.append(
            f"| {arch} | {r['precision']} | {_num(r['tokens_per_s'])} ({_num(lo)}–{_num(hi)}) | "
            f"{_num(r['ms_per_update'], '{:,.1f}')} ({_num(mlo, '{:,.1f}')}–{_num(mhi, '{:,.1f}')}) | "
            f"{_num(r['peak_mem_mb'])} | {_params(r['params'])} | "
            f"{_num(fpt / 1e9 if fpt else None, '{:.4g}')} | {_num(r['mfu'] * 100 if r['mfu'] is not None else None, '{:.1f}%')} | "
            f"{_ratio(r['ratio']['tokens_per_s'])} | {_ratio(r['ratio']['ms_per_update'])} | "
            f"{_ratio(r['ratio']['peak_mem_mb'])} |")
    return "\n".join(rows)


def _run_name(r: dict) -> str:
    """``label: arch (its options)``; the label only where it is not the arch."""
    swept = (r.get("swept") or {}).get("key")
    sets = ", ".join(f"{k}={v}" for k, v in r["overrides"].items() if k != swept)
    label = r.get("label") or r["arch"]
    arch = label if label.split("@")[0] == r["arch"] else f"{label}: {r['arch']}"
    return f"{arch} ({sets})" if sets else arch


def _share(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def memory_table(result: dict) -> str:
    """kNN memory runs next to the baseline (the first run): memory size and fill, tokens/s and
    peak memory, the memory path's share of the update time (measured: its forward, instrumented;
    and the whole update's extra time over the baseline) and of the analytic FLOPs."""
    rows = ["| run | memory D | filled before timing | tokens/s | tokens/s × | peak mem MB | memory time share "
            "(forward, measured) | extra time vs first run | memory FLOPs share |",
            "|---|---|---|---|---|---|---|---|---|"]
    base = result["runs"][0]
    for r in result["runs"]:
        m = r.get("memory") or {}
        fill = m.get("fill") or {}
        if fill:
            n = fill["segments"]
            how = (f"{n} segment{'s' * (n != 1)}" if fill["method"] == "segments" else "written directly") + \
                  f", {fill.get('entries_per_lane_head', fill.get('entries_per_lane')):,} entries"
        else:
            how = "–"
        extra = 1 - base["ms_per_update"] / r["ms_per_update"] if r is not base else None
        rows.append(f"| {_run_name(r)} | {_num(fill.get('memory_size'))} | {how} | {_num(r['tokens_per_s'])} | "
                    f"{_ratio(r['ratio']['tokens_per_s'])} | {_num(r['peak_mem_mb'])} | "
                    f"{_share(m.get('time_share_forward'))} | {_share(extra)} | {_share(m.get('flops_share'))} |")
    return "\n".join(rows)


def sweep_plot(result: dict, path: Path) -> Path:
    """Tokens/s and peak memory against the swept option (log scale when numeric), one line per
    swept arch, the other runs as horizontal lines."""
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    groups: dict = {}
    for r in runs:
        if r.get("swept"):
            groups.setdefault(r["swept"]["of"], []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, (key, label) in zip(axes, (("tokens_per_s", "tokens/s"), ("peak_mem_mb", "peak memory (MB)"))):
        numeric = True
        for name, members in groups.items():
            try:
                xs = [float(r["swept"]["value"]) for r in members]
            except ValueError:
                numeric, xs = False, list(range(len(members)))
            ax.plot(xs, [r[key] for r in members], marker="o", label=name)
        for i, r in enumerate(x for x in runs if not x.get("swept")):
            ax.axhline(r[key], linestyle="--", color=f"C{len(groups) + i}", label=r.get("label") or r["arch"])
        if numeric and groups:
            ax.set_xscale("log", base=2)
        swept_keys = sorted({r["swept"]["key"] for r in runs if r.get("swept")})
        ax.set_xlabel(", ".join(swept_keys))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['name']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def compare_table(result: dict) -> str:
    """One row per configuration of a side-by-side training comparison; BLiMP columns (overall
    accuracy with its pair count, then per field) when the spec scored BLiMP."""
    fields = sorted({f for r in result["runs"] for f in r.get("blimp", {}).get("fields", {})})
    blimp_columns = ["BLiMP % (pairs)"] + [f"{f} %" for f in fields] if fields else []
    rows = ["| run | updates | wall s | train loss (bits) | valid loss (bits) | valid ppl | best valid loss (bits) | "
            "FLOPs (analytic) | words/s |" + "".join(f" {c} |" for c in blimp_columns),
            "|---|---|---|---|---|---|---|---|---|" + "---|" * len(blimp_columns)]
    book_runs = [r for r in result["runs"] if r.get("books")]
    if book_runs:
        rows[0] += f" {book_runs[0]['books']['split']} ppl (all books) |"
        rows[1] += "---|"
    for r in result["runs"]:
        row = (f"| {r['name']} | {_num(r.get('updates'))} | {_num(r.get('wall_s'), '{:,.1f}')} | "
               f"{_num(r.get('train_loss'), '{:.3f}')} | {_num(r.get('valid_loss'), '{:.3f}')} | "
               f"{_num(r.get('valid_ppl'), '{:,.2f}')} | {_num(r.get('best_valid_loss'), '{:.3f}')} | "
               f"{_num(r.get('total_flops'), '{:.3g}')} | {_num(r.get('wps'))} |")
        if fields:
            blimp = r.get("blimp", {})
            overall = blimp.get("overall", {})
            row += f" {_percent(overall)} ({_num(overall.get('pairs'))}) |"
            row += "".join(f" {_percent(blimp.get('fields', {}).get(f, {}))} |" for f in fields)
        if book_runs:
            row += f" {_num(r.get('books', {}).get('overall', {}).get('perplexity'), '{:,.2f}')} |"
        rows.append(row)
    return "\n".join(rows + ([""] + books_table(book_runs) if book_runs else []))


def books_table(runs: List[dict]) -> List[str]:
    """Perplexity per book (rows) and run (columns), the state carried over each whole book."""
    books = runs[0]["books"]["books"]
    rows = ["| book | tokens |" + "".join(f" {r['name']} |" for r in runs),
            "|---|---|" + "---|" * len(runs)]
    for i, book in enumerate(books):
        rows.append(f"| {book['document']} | {book['tokens']:,} |"
                    + "".join(f" {r['books']['books'][i]['perplexity']:,.2f} |" for r in runs))
    rows.append("| **overall** | " + f"{runs[0]['books']['overall']['tokens']:,} |"
                + "".join(f" **{r['books']['overall']['perplexity']:,.2f}** |" for r in runs))
    return rows


def _percent(score: dict) -> str:
    return _num(100 * score["accuracy"] if "accuracy" in score else None, "{:.1f}")


def portable(text: str) -> str:
    """``text`` without the machine paths a run recorded (``/srv/x/data-bin/pg-mini`` -> ``data-bin/pg-mini``):
    RESULTS.md is read on other machines."""
    return MACHINE_DATA_PATH.sub("", text)


def section(result: dict) -> str:
    """The RESULTS.md section of one result file."""
    m = result["machine"]
    machine = f"CPU {m.get('cpu')} ({m.get('cpu_count')} logical cores visible)"
    if m.get("gpu"):
        machine = f"GPU {m['gpu']}; " + machine
    versions = ", ".join(f"{k} {m[k]}" for k in ("python", "torch", "fairseq") if m.get(k))
    lines = [f"### {result['name']} ({result['kind']})", "",
             f"- date: {result['date']}", f"- machine: {machine}; {versions}",
             f"- command: `{result['command']}`"]
    if result.get("note"):
        lines.append(f"- note: {result['note']}")
    if result["kind"] == "throughput":
        peak = result.get("peak_bf16_tflops")
        s = result["settings"]
        lines.append(f"- shape: seq_len {s['seq_len']}, batch {s['batch_size']}, vocab {s['vocab_size']}, "
                     f"task {s['task']}, {s['steps']} timed updates × {s['repeats']} repeats after "
                     f"{s['warmup']} warm-up; peak memory: {result['runs'][0]['memory_measure']}"
                     + (f"; MFU vs {peak} TFLOP/s bf16 peak" if peak else ""))
        table = throughput_table(result)
        if any("memory" in r for r in result["runs"]):
            table += "\n\n" + memory_table(result)
        peers = [r for r in result["runs"] if r.get("peer")]
        for r in peers:
            table += f"\n\n- {_run_name(r)}: {r['peer']['package']} {r['peer']['version']}; {r['peer']['note']}"
    else:
        table = compare_table(result)
        budget = ", ".join(f"{k} {v}" for k, v in result["budget"].items())
        lines.append(f"- data: `{result['data']}`; budget per run: {budget}")
    table += "".join(f"\n\n![{result['name']}]({(Path('..') / plot).as_posix()})" for plot in result.get("plots", []))
    return portable("\n".join(lines + ["", table, ""]))


def load_results(results_dir: Path = RESULTS_DIR) -> List[dict]:
    found = [json.loads(p.read_text()) for p in sorted(Path(results_dir).glob("*.json"))]
    return sorted(found, key=lambda r: (r["kind"], r["date"], r["name"]))


def render(results: List[dict], summary_md: Path = SUMMARY_MD) -> str:
    """RESULTS.md: the hand-written summary of goals (``summary_md``, if any), then every result's table."""
    head = ["# Results", "",
            "Generated by `python -m benchmarks.results` from `benchmarks/results/summary.md` and "
            "`benchmarks/results/*.json`; do not edit by hand. How to read and re-run each table: "
            "docs/families/benchmarks.md.", ""]
    if Path(summary_md).is_file():
        head += [Path(summary_md).read_text().strip(), ""]
    body = []
    for kind, title in (("throughput", "Training throughput"), ("compare", "Side-by-side training")):
        chosen = [r for r in results if r["kind"] == kind]
        if chosen:
            body += [f"## {title}", ""] + [section(r) for r in chosen]
    return "\n".join(head + body)


def write_results_md(results_dir: Path = RESULTS_DIR, out: Path = RESULTS_MD) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(load_results(results_dir), Path(results_dir) / "summary.md"))
    return out


if __name__ == "__main__":
    print(write_results_md())
