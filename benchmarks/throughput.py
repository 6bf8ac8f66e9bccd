r"""Training throughput of several fairseq architectures at one shape, side by side.

Every arch (ours or stock fairseq's) is built through fairseq's own objects — the task from
``tasks.setup_task`` over a synthetic dictionary, ``task.build_model``, ``task.build_criterion``
and fairseq's ``Trainer`` (which builds the optimizer, FP16Optimizer under ``--fp16``) — and
trained for real (forward, backward, optimizer step) on synthetic token batches, identical for
every arch. Each arch runs in a fresh subprocess of this one invocation, one after the other, so
its peak memory is its own: CUDA ``max_memory_allocated`` on a GPU, on CPU the peak resident set
(``ru_maxrss``) minus the resident set before the model is built. The first arch is the baseline
of every ratio.

    python benchmarks/throughput.py --archs roberta_base,roberta_ext_baseline_base \
        --seq-len 512 --batch-size 2 --steps 3 --warmup 1 --repeats 3 --name cpu_roberta_base

A long-document LM (its forward takes ``start_of_sequence``) streams: every lane starts a
document at the first update and continues it afterwards, so caches and kNN memories carry over.
A kNN memory is filled before timing (``--memory-fill``), and the forward time of the memory
path is measured in extra instrumented updates. ``--archs`` entries ``peer.NAME`` are peer
PyTorch implementations (``benchmarks/peers.py``), run in ``--peer-python`` at the same shape;
``--sweep ARCH:key=v1,v2`` runs one arch once per value (e.g. the memory size) and plots
tokens/s and peak memory against it.
"""
import argparse
import inspect
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # so the script runs from anywhere, like fairseq's own scripts

from benchmarks import results  # noqa: E402

# Dense bf16 tensor-core peak, TFLOP/s (vendor datasheets, without sparsity).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}

SHAPE_OPTIONS = {  # --flag: (encoder option, decoder option)
    "layers": ("encoder_layers", "decoder_layers"),
    "embed_dim": ("encoder_embed_dim", "decoder_embed_dim"),
    "ffn_dim": ("encoder_ffn_embed_dim", "decoder_ffn_embed_dim"),
    "heads": ("encoder_attention_heads", "decoder_attention_heads"),
}
LM_TASKS = ("language_modeling",)  # next-token tasks: decoder_* options, cross_entropy
TASK_ALIASES = {"language_model": "language_modeling"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", required=True,
                   help="comma-separated [LABEL=]ARCH, ARCH a registered arch or peer.NAME (a peer implementation, "
                        "benchmarks/peers.py); the first is the baseline; --set and --sweep name the LABEL (default ARCH)")
    p.add_argument("--task", default="masked_lm", help="fairseq task: masked_lm (or a plugin masked-LM task) or language_modeling "
                        "(alias language_model)")
    p.add_argument("--layers", type=int, help="encoder_layers / decoder_layers for every arch")
    p.add_argument("--embed-dim", type=int, help="encoder_embed_dim / decoder_embed_dim for every arch")
    p.add_argument("--ffn-dim", type=int, help="encoder_ffn_embed_dim / decoder_ffn_embed_dim for every arch")
    p.add_argument("--heads", type=int, help="encoder_attention_heads / decoder_attention_heads for every arch")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (also tokens_per_sample, max_positions)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per update")
    p.add_argument("--vocab-size", type=int, default=50265, help="size of the synthetic dictionary (roberta-base's GPT-2 BPE: 50265)")
    p.add_argument("--set", action="append", default=[], metavar="ARCH:key=value",
                   help="extra option for one arch (fairseq option name; true/false for flags; "
                        "precision=fp16 overrides --precision for that arch); repeatable")
    p.add_argument("--sweep", action="append", default=[], metavar="ARCH:key=v1,v2,...",
                   help="run ARCH (a LABEL of --archs) once per value of one option, labelled ARCH@key=v, and plot "
                        "tokens/s and peak memory against the value; repeatable (one option per ARCH)")
    p.add_argument("--memory-fill", choices=["segments", "direct"], default="segments",
                   help="how a kNN memory is made full before the warm-up: 'segments' streams ceil(D / seq_len) "
                        "segments through the model (forward, no gradient); 'direct' streams one and then writes "
                        "random unit keys into every slot (our search scores every slot whatever it holds, so the "
                        "timing is the same; for D in the 100k's on a CPU)")
    p.add_argument("--peer-python", default=str(REPO / ".venv-peers" / "bin" / "python"),
                   help="interpreter with the peer libraries (scripts/setup_peers.sh) for peer.NAME archs")
    p.add_argument("--steps", type=int, default=10, help="timed updates per repeat")
    p.add_argument("--warmup", type=int, default=3, help="untimed updates before the first repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median and spread reported)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="fp16: fairseq's --fp16 (FP16Optimizer); bf16: the arch's bf16_autocast option")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="alternate the archs' repeats (all archs' processes alive at once) instead of "
                        "one arch after another; default: on for cpu, off for cuda")
    p.add_argument("--optimizer", default="adam", help="fairseq optimizer")
    p.add_argument("--peak-tflops", type=float, help="device peak bf16 TFLOP/s for MFU (default: looked up from the GPU name)")
    p.add_argument("--name", required=True, help="result name: writes benchmarks/results/<name>.json")
    p.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results"), help="where the JSON goes")
    p.add_argument("--note", help="a remark shown with the result in docs/RESULTS.md (e.g. shared CPU)")
    p.add_argument("--no-docs", action="store_true", help="do not regenerate docs/RESULTS.md")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: JSON spec of one arch run
    return p.parse_args(argv)


PEER_PREFIX = "peer."


def arch_labels(args: argparse.Namespace) -> Dict[str, str]:
    """``--archs`` as {label: arch}, in order; a label is given as LABEL=ARCH, else it is the arch."""
    out: Dict[str, str] = {}
    for item in args.archs.split(","):
        label, _, arch = item.rpartition("=")
        label = label or arch
        if not arch or label in out:
            raise ValueError(f"--archs {args.archs}: each arch once (its --set options are keyed by its name), "
                             "or label repeats as LABEL=ARCH")
        out[label] = arch
    return out


def arch_overrides(args: argparse.Namespace) -> Dict[str, Dict[str, str]]:
    """``--set ARCH:key=value`` as {label: {key: value}}; bad entries fail with the flag named."""
    labels = list(arch_labels(args))
    out: Dict[str, Dict[str, str]] = {a: {} for a in labels}
    for item in args.set:
        arch, sep, kv = item.partition(":")
        key, eq, value = kv.partition("=")
        if not (sep and eq and key) or arch not in out:
            raise ValueError(f"--set {item!r}: expected ARCH:key=value with ARCH one of --archs {labels}")
        out[arch][key.replace("-", "_")] = value
    return out


def sweeps(args: argparse.Namespace) -> Dict[str, tuple]:
    """``--sweep ARCH:key=v1,v2`` as {label: (key, [values])}; bad entries fail with the flag named."""
    labels = list(arch_labels(args))
    out: Dict[str, tuple] = {}
    for item in args.sweep:
        arch, sep, kv = item.partition(":")
        key, eq, values = kv.partition("=")
        if not (sep and eq and key and values) or arch not in labels or arch in out:
            raise ValueError(f"--sweep {item!r}: expected ARCH:key=v1,v2,... with ARCH one of --archs {labels}, "
                             "one --sweep per arch")
        out[arch] = (key.replace("-", "_"), values.split(","))
    return out


def expand_runs(args: argparse.Namespace) -> List[dict]:
    """One {label, arch, overrides, swept} per run: every --archs entry, a swept one once per value."""
    overrides, swept = arch_overrides(args), sweeps(args)
    runs = []
    for label, arch in arch_labels(args).items():
        if label not in swept:
            runs.append({"label": label, "arch": arch, "overrides": dict(overrides[label]), "swept": None})
            continue
        key, values = swept[label]
        for value in values:
            runs.append({"label": f"{label}@{key}={value}", "arch": arch, "swept": {"of": label, "key": key, "value": value},
                         "overrides": {**overrides[label], key: value}})
    return runs


def option_argv(options: Dict[str, str], actions: Dict[str, argparse.Action], arch: str) -> List[str]:
    """fairseq command-line flags for {option: value}, written the way each option's parser
    action takes them: a bare flag for store_true/store_false, ``True``/``False`` for
    BOOL-valued options; an option the arch's parser lacks is an error naming it."""
    argv: List[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        action = actions.get(flag)
        if action is None:
            raise ValueError(f"option {key!r} (from a shape flag or --set) is not an option of arch {arch}")
        text = str(value)
        if text.lower() in ("true", "false"):
            text = text.capitalize()
        if action.nargs == 0:  # store_true / store_false
            argv += [flag] if (text == "True") == action.const else []
        else:
            argv += [flag, text]
    return argv


def base_argv(spec: dict, data_dir: str) -> List[str]:
    """The fairseq-train command line of one benchmark run, before shape and extra options."""
    decoder = spec["task"] in LM_TASKS
    argv = [data_dir, "--task", spec["task"], "--arch", spec["arch"], "--criterion",
            "cross_entropy" if decoder else "masked_lm", "--optimizer", spec["optimizer"],
            "--lr", "1e-4", "--batch-size", str(spec["batch_size"]), "--seed", "1",
            "--num-workers", "0", "--disable-validation"]
    if spec["device"] == "cpu":
        argv.append("--cpu")
    if spec["precision"] == "fp16":
        argv.append("--fp16")
    return argv


def run_options(spec: dict) -> Dict[str, str]:
    """Shape flags as fairseq's standard option names, then the arch's --set options."""
    decoder = spec["task"] in LM_TASKS
    opts = {SHAPE_OPTIONS[k][int(decoder)]: v for k, v in spec["shape"].items() if v is not None}
    seq = spec["seq_len"]
    opts.update({"tokens_per_sample": seq, "max_target_positions": seq} if decoder else
                {"tokens_per_sample": seq, "max_positions": seq})
    if spec["precision"] == "bf16":
        opts["bf16_autocast"] = "true"
    return {**opts, **spec["overrides"]}


def parse_fairseq_args(spec: dict, data_dir: str) -> argparse.Namespace:
    """fairseq's own parsing (``options.parse_args_and_arch``): a first pass collects the
    parser actions of this arch, task, criterion and optimizer, so options are spelled right."""
    from fairseq import options

    base = base_argv(spec, data_dir)
    probe = options.get_training_parser()
    options.parse_args_and_arch(probe, base, parse_known=True)
    if spec["precision"] == "bf16" and "--bf16-autocast" not in probe._option_string_actions:
        raise ValueError(f"--precision bf16: arch {spec['arch']} has no bf16_autocast option; "
                         f"use --set {spec['arch']}:precision=fp16 (stock fairseq's --fp16)")
    argv = base + option_argv(run_options(spec), probe._option_string_actions, spec["arch"])
    return options.parse_args_and_arch(options.get_training_parser(), argv)


def synthetic_batch(task, spec: dict, dictionary):
    """A fairseq sample of random real-symbol tokens; masked LM: a ``mask_prob`` share of
    positions replaced by ``<mask>`` (all positions targets when mask_prob is 0, self-masking)."""
    import torch

    g = torch.Generator().manual_seed(0)
    B, T = spec["batch_size"], spec["seq_len"]
    tokens = torch.randint(dictionary.nspecial, len(dictionary) - 1, (B, T), generator=g)
    if hasattr(task, "mask_idx"):
        mask_prob = getattr(task.cfg, "mask_prob", 0.15)
        if mask_prob > 0:
            masked = torch.rand(B, T, generator=g) < mask_prob
            masked[:, 0] = True  # at least one target per row
            src = tokens.masked_fill(masked, task.mask_idx)
            target = tokens.masked_fill(~masked, dictionary.pad())
        else:
            src, target = tokens, tokens.clone()
    else:  # next-token prediction
        src, target = tokens, torch.roll(tokens, -1, dims=1)
    return {"id": torch.arange(B), "nsentences": B, "ntokens": B * T, "target": target,
            "net_input": {"src_tokens": src, "src_lengths": torch.full((B,), T)}}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def say(channel, word: str) -> None:
    channel.write(word + "\n")
    channel.flush()


def timed_repeats(step, spec: dict, channel, sync, go=None) -> List[float]:
    """``--warmup`` untimed calls of ``step``, "ready" on ``channel``, then per repeat (when ``go()``
    says so: the parent's "go" on stdin, so repeats of several processes can alternate) ``--steps``
    timed calls and "done". Seconds per repeat; ``sync`` waits for the device."""
    go = go or (lambda: sys.stdin.readline().strip() == "go")

    def steps(n: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        return time.perf_counter() - start

    steps(spec["warmup"])
    times = []
    say(channel, "ready")
    for _ in range(spec["repeats"]):
        if not go():
            raise SystemExit("benchmark worker: parent went away")
        times.append(steps(spec["steps"]))
        say(channel, "done")
    return times


def device_sync(cuda: bool):
    import torch

    return torch.cuda.synchronize if cuda else (lambda: None)


def peak_memory(cuda: bool, rss0: float) -> dict:
    """Peak memory of this process: the device's on CUDA, else the resident set above ``rss0``;
    the host's peak resident set too (a peer's faiss index lives there even on CUDA)."""
    import torch

    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        return {"peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20, "host_peak_rss_mb": host,
                "memory_measure": "cuda max_memory_allocated"}
    return {"peak_mem_mb": host - rss0, "host_peak_rss_mb": host,
            "memory_measure": "ru_maxrss - rss before model build"}


def memory_layers(model) -> list:
    from fairseq_ext.models.memorizing_lm import MemoryAttention

    return [m for m in model.modules() if isinstance(m, MemoryAttention)]


def fill_memory(model, net_input: dict, spec: dict) -> Optional[dict]:
    """Make every kNN memory of ``model`` full before timing (see --memory-fill); None without one.
    ``net_input`` holds a (B,) ``start_of_sequence``, set to False afterwards (lanes continue)."""
    import torch

    from fairseq_ext.modules.window_attention import unit_normalise

    layers = memory_layers(model)
    if not layers:
        return None
    size, T = max(layer.memory.size for layer in layers), spec["seq_len"]
    direct = spec["memory_fill"] == "direct"
    segments = 1 if direct else math.ceil(size / T)  # direct: one segment starts the documents (and caches)
    model.train()
    with torch.no_grad():
        for i in range(segments):
            net_input["start_of_sequence"].fill_(i == 0)
            model(**net_input)
    if direct:
        B = net_input["src_tokens"].shape[0]
        device = next(model.parameters()).device
        torch.manual_seed(0)
        for layer in layers:
            shape = (B, layer.num_heads, layer.memory.size, layer.head_dim)
            keys, values = unit_normalise(torch.randn(*shape, device=device)), torch.randn(*shape, device=device)
            layer.memory.store(True, (keys, values, torch.full((B,), layer.memory.size, device=device)))
    net_input["start_of_sequence"].fill_(False)
    count = layers[0].memory.get(True)[2]
    return {"method": spec["memory_fill"], "segments": segments, "memory_size": size,
            "entries_per_lane_head": int(count.min().clamp(max=size))}


def memory_time_share(model, step, steps: int, sync) -> float:
    """Share of an update's wall time spent in the forward of the memory path of the memory layers
    (reset copy, search, gather, external attention, gate, write: ``MemoryAttention.segment_heads``
    minus the local attention it calls), over ``steps`` extra updates, synchronised around each
    timed region. The backward of the external attention (a few k-sized einsums) is not in it."""
    from fairseq_ext.models.memorizing_lm import MemoryAttention
    from fairseq_ext.models.txl_lm import WindowedSelfAttention

    (outer, inner), total = clocked_seconds(
        [(MemoryAttention, "segment_heads"), (WindowedSelfAttention, "segment_heads")], step, steps, sync,
        instances_of=MemoryAttention)
    return (outer - inner) / total


def clocked_seconds(methods, step, steps: int, sync, instances_of=object):
    """Run ``step()`` ``steps`` times; return the wall seconds spent inside each (class, method name)
    of ``methods`` (counted only for calls on an ``instances_of``, so that a subclass's call of its
    parent's method can be told apart), and the seconds of all ``steps``. ``sync`` waits for the
    device, so that asynchronous kernels count where they were launched."""
    spent = [0.0] * len(methods)
    originals = [(cls, name, cls.__dict__.get(name), getattr(cls, name)) for cls, name in methods]

    def clocked(index, fn):
        def wrapped(self, *args, **kwargs):
            if not isinstance(self, instances_of):
                return fn(self, *args, **kwargs)
            sync()
            start = time.perf_counter()
            out = fn(self, *args, **kwargs)
            sync()
            spent[index] += time.perf_counter() - start
            return out
        return wrapped

    for index, (cls, name, _, fn) in enumerate(originals):
        setattr(cls, name, clocked(index, fn))
    try:
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        total = time.perf_counter() - start
    finally:
        for cls, name, own, _ in originals:
            if own is None:
                delattr(cls, name)
            else:
                setattr(cls, name, own)
    return spent, total


def memory_flops_share(model, seq_len: int) -> float:
    """The memory's share of the analytic training FLOPs: what ``flops_per_token`` adds to txl_lm's."""
    from fairseq_ext.models.txl_lm import TxlLanguageModel

    total = model.flops_per_token(seq_len)
    return (total - TxlLanguageModel.flops_per_token(model, seq_len)) / total


def run_worker(spec: dict, channel) -> dict:
    """Build one arch through fairseq and time real training steps (in this fresh process),
    one repeat each time the parent writes "go" on stdin; "ready"/"done" go to ``channel``."""
    import torch
    from fairseq import tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    import fairseq_ext  # noqa: F401  (registers the plugin)
    from fairseq_ext.flops import model_flops_per_token

    cuda = spec["device"] == "cuda"
    with tempfile.TemporaryDirectory() as data_dir:
        with open(os.path.join(data_dir, "dict.txt"), "w") as f:
            # nspecial=4 + symbols (+ <mask> added by masked-LM tasks) = vocab_size
            n = spec["vocab_size"] - 4 - int(spec["task"] not in LM_TASKS)
            f.writelines(f"w{i} {n - i}\n" for i in range(n))
        cfg = convert_namespace_to_omegaconf(parse_fairseq_args(spec, data_dir))
        task = tasks.setup_task(cfg.task)
        rss0 = rss_mb()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        model = task.build_model(cfg.model)
        criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    sample = synthetic_batch(task, spec, task.source_dictionary)
    fill = None
    if "start_of_sequence" in inspect.signature(model.forward).parameters:
        # a long-document LM streams: every lane starts a document (the memory is filled first, if
        # any), and continues it at every later update, so its cache and memory carry over
        flags = torch.ones(spec["batch_size"], dtype=torch.bool)
        sample["net_input"]["start_of_sequence"] = flags
        net_input = utils.move_to_cuda(dict(sample["net_input"])) if cuda else dict(sample["net_input"])
        net_input["start_of_sequence"] = flags.to(net_input["src_tokens"].device)
        fill = fill_memory(model, net_input, spec)
        if fill is not None:
            flags.fill_(False)

        def step():
            trainer.train_step([sample])
            flags.fill_(False)  # after the first update, every lane continues its document
    else:
        def step():
            trainer.train_step([sample])

    sync = device_sync(cuda)
    times = timed_repeats(step, spec, channel, sync)
    mask_prob = getattr(task.cfg, "mask_prob", 0.15) if hasattr(task, "mask_idx") else 1.0
    run = {
        "arch": spec["arch"], "label": spec["label"], "precision": spec["precision"], "overrides": spec["overrides"],
        "params": sum(p.numel() for p in model.parameters()),
        "flops_per_token": model_flops_per_token(model, spec["seq_len"], mask_prob or 1.0),
        "step_times_s": [t / spec["steps"] for t in times],
        **peak_memory(cuda, rss0),
    }
    if fill is not None:
        run["memory"] = {"fill": fill, "time_share_forward": memory_time_share(model, step, spec["steps"], sync),
                         "flops_share": memory_flops_share(model, spec["seq_len"]), "profiled_updates": spec["steps"]}
    return run


def serve_worker(spec_path: str, run) -> None:
    """The worker side of the protocol: ``run(spec, channel)``'s result to the spec's ``out``."""
    channel = os.fdopen(os.dup(1), "w")  # the protocol keeps stdout; anything printed goes to stderr
    os.dup2(2, 1)
    spec = json.loads(Path(spec_path).read_text())
    result = run(spec, channel)
    Path(spec["out"]).write_text(json.dumps(result))
    channel.close()


def summarize(run: dict, spec: dict, peak_tflops) -> dict:
    """Median and spread (min..max) of ms/update and tokens/s over repeats; MFU."""
    tokens = spec["batch_size"] * spec["seq_len"]
    ms = sorted(1000 * t for t in run["step_times_s"])
    tps = sorted(tokens * 1000 / m for m in ms)
    run.update(ms_per_update=statistics.median(ms), ms_per_update_range=[ms[0], ms[-1]],
               tokens_per_s=statistics.median(tps), tokens_per_s_range=[tps[0], tps[-1]])
    fpt = run["flops_per_token"]
    run["mfu"] = fpt * run["tokens_per_s"] / (peak_tflops * 1e12) if (fpt and peak_tflops) else None
    return run


def add_ratios(runs: List[dict]) -> None:
    """Each figure as a ratio to the first arch's (the stock baseline)."""
    base = runs[0]
    for run in runs:
        run["ratio"] = {k: (run[k] / base[k] if run.get(k) and base.get(k) else None)
                        for k in ("tokens_per_s", "ms_per_update", "peak_mem_mb", "params", "flops_per_token")}


def machine_info(device: str) -> dict:
    import torch

    info = {"cpu": results.cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__}
    try:
        import fairseq
        info["fairseq"] = fairseq.__version__
    except Exception:  # fairseq missing only matters to the worker, which reports it
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def lookup_peak(gpu_name: str):
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu_name), None)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        serve_worker(args.worker, run_worker)
        return {}
    args.task = TASK_ALIASES.get(args.task, args.task)
    planned = expand_runs(args)
    shape = {k: getattr(args, k) for k in SHAPE_OPTIONS}
    machine = machine_info(args.device)
    peak = args.peak_tflops or (lookup_peak(machine.get("gpu", "")) if args.device == "cuda" else None)
    interleave = args.interleave if args.interleave is not None else args.device == "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        specs = []
        for i, planned_run in enumerate(planned):
            extra = dict(planned_run["overrides"])
            specs.append({"arch": planned_run["arch"], "label": planned_run["label"], "swept": planned_run["swept"],
                          "task": args.task, "shape": shape, "seq_len": args.seq_len,
                          "batch_size": args.batch_size, "vocab_size": args.vocab_size,
                          "precision": extra.pop("precision", args.precision), "overrides": extra,
                          "optimizer": args.optimizer, "device": args.device, "steps": args.steps,
                          "warmup": args.warmup, "repeats": args.repeats, "memory_fill": args.memory_fill,
                          "peer_python": args.peer_python, "tmp": tmp, "out": f"{tmp}/{i}.out.json"})
        run_workers(specs, Path(tmp), interleave)
        runs = []
        for spec in specs:
            run = summarize(json.loads(Path(spec["out"]).read_text()), spec, peak)
            if spec["swept"]:
                run["swept"] = spec["swept"]
            runs.append(run)
    add_ratios(runs)
    result = {
        "kind": "throughput", "name": args.name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/throughput.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "machine": machine, "peak_bf16_tflops": peak, "note": args.note,
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "results_dir", "no_docs", "note")},
        "runs": runs,
    }
    out = Path(args.results_dir) / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        png = results.sweep_plot(result, out.with_suffix(".png"))
        result["plots"] = [str(png.relative_to(REPO)) if png.is_relative_to(REPO) else str(png)]
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(results.throughput_table(result))
    if any("memory" in run for run in runs):
        print(results.memory_table(result))
    if not args.no_docs:
        results.write_results_md()
    return result


class Worker:
    """One arch's benchmark process; its log goes to a file, shown only when it fails."""

    def __init__(self, spec: dict, tmp: Path, index: int):
        self.arch = spec["label"]
        (tmp / f"{index}.json").write_text(json.dumps(spec))
        self.log_path = tmp / f"{index}.log"
        if spec["arch"].startswith(PEER_PREFIX):  # a peer implementation, in the peers' interpreter
            if not Path(spec["peer_python"]).exists():
                raise SystemExit(f"{spec['arch']}: no peer interpreter {spec['peer_python']} "
                                 "(run scripts/setup_peers.sh, or give --peer-python)")
            command = [spec["peer_python"], str(REPO / "benchmarks" / "peers.py"), "--worker", str(tmp / f"{index}.json")]
        else:
            command = [sys.executable, __file__, "--archs", "-", "--name", "-", "--worker", str(tmp / f"{index}.json")]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         text=True, env=worker_env())
        print(f"[throughput] {self.arch}: building, warming up", file=sys.stderr, flush=True)

    def expect(self, word: str) -> None:
        if self.proc.stdout.readline().strip() != word:
            self.proc.wait()
            sys.stderr.write(self.log_path.read_text()[-6000:])
            raise SystemExit(f"benchmark worker for {self.arch} failed ({self.proc.returncode})")

    def repeat(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.expect("done")

    def finish(self) -> None:
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            sys.stderr.write(self.log_path.read_text()[-6000:])
            raise SystemExit(f"benchmark worker for {self.arch} failed ({self.proc.returncode})")


def run_workers(specs: List[dict], tmp: Path, interleave: bool) -> None:
    """Each arch in a fresh process. Interleaved (default on CPU, where other load drifts over
    time): every arch is built and warmed up, then repeat r of each arch runs in turn before
    repeat r+1, so a slow spell hits all archs alike; one worker computes at any moment.
    Sequential (default on CUDA): one arch after another, only one model in device memory."""
    if interleave:
        workers = []
        for i, spec in enumerate(specs):
            workers.append(Worker(spec, tmp, i))
            workers[-1].expect("ready")  # builds one at a time, so none competes with another
        for _ in range(specs[0]["repeats"]):
            for w in workers:
                w.repeat()
        for w in workers:
            w.finish()
        return
    for i, spec in enumerate(specs):
        w = Worker(spec, tmp, i)
        w.expect("ready")
        for _ in range(spec["repeats"]):
            w.repeat()
        w.finish()


def worker_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


if __name__ == "__main__":
    main()
