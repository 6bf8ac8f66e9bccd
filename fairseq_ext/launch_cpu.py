"""Data-parallel fairseq training on CPU: N ``fairseq-train`` processes on gloo.

    python -m fairseq_ext.launch_cpu --nprocs 2 -- DATA --user-dir fairseq_ext --arch ... --cpu

Stock fairseq cannot do this by itself: ``--cpu --distributed-world-size 2`` fails with
"0 available devices" and ``pytorch_ddp`` refuses CPU modules. What works (FAIRSEQ_NOTES) is
one process per rank, each told its rank, a tcp rendezvous, ``--distributed-no-spawn``, the
gloo backend and ``legacy_ddp``. Every rank is a fresh ``fairseq-train`` that imports the
plugin through ``--user-dir``, the path multi-GPU users take with ``torchrun``. Rank 0 prints
fairseq's progress; the other ranks' output is shown only if they fail. Each rank gets
``--batch-size`` sentences, so the total batch is nprocs x batch size.
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

DISTRIBUTED_FLAGS = ("--distributed-world-size", "--distributed-rank", "--distributed-init-method",
                     "--distributed-backend", "--ddp-backend", "--distributed-no-spawn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_command(train_args: List[str], rank: int, nprocs: int, port: int) -> List[str]:
    train = Path(sys.executable).parent / "fairseq-train"
    return [str(train), *train_args, "--distributed-world-size", str(nprocs),
            "--distributed-rank", str(rank), "--distributed-init-method", f"tcp://127.0.0.1:{port}",
            "--distributed-no-spawn", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"]


def check_args(train_args: List[str], nprocs: int) -> None:
    if nprocs < 1:
        raise SystemExit(f"launch_cpu: error: --nprocs must be >= 1, got {nprocs}")
    if "--cpu" not in train_args:
        raise SystemExit("launch_cpu: error: the fairseq-train arguments must include --cpu")
    clash = [f for f in DISTRIBUTED_FLAGS if f in train_args]
    if clash:
        raise SystemExit(f"launch_cpu: error: remove {', '.join(clash)}; launch_cpu sets them")


def launch(train_args: List[str], nprocs: int, port: int = 0) -> int:
    check_args(train_args, nprocs)
    port = port or free_port()
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(1, nprocs)]
    procs = [subprocess.Popen(rank_command(train_args, 0, nprocs, port))]
    procs += [subprocess.Popen(rank_command(train_args, r, nprocs, port), stdout=log, stderr=subprocess.STDOUT)
              for r, log in enumerate(logs, start=1)]
    while any(p.poll() is None for p in procs):
        if any(p.returncode not in (None, 0) for p in procs):
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            break
        time.sleep(0.2)
    codes = [p.wait() for p in procs]
    for rank, (code, log) in enumerate(zip(codes[1:], logs), start=1):
        if code:
            log.seek(0)
            print(f"--- rank {rank} exited with {code}:\n{log.read()[-4000:]}", file=sys.stderr)
    return next((c for c in codes if c), 0)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: python -m fairseq_ext.launch_cpu [--nprocs N] [--port P] -- FAIRSEQ_TRAIN_ARGS")
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="python -m fairseq_ext.launch_cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--nprocs", type=int, default=os.cpu_count() or 1, help="number of training processes")
    p.add_argument("--port", type=int, default=0, help="rendezvous port on 127.0.0.1 (default: a free one)")
    args = p.parse_args(argv[:split])
    sys.exit(launch(argv[split + 1:], args.nprocs, args.port))


if __name__ == "__main__":
    main()
