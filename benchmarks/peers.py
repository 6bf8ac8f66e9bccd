r"""Peer PyTorch implementations timed at our shapes, for ``benchmarks/throughput.py``.

``--archs peer.NAME`` runs one of ``PEERS`` in the peers' own interpreter (``--peer-python``,
default ``.venv-peers/bin/python`` from ``scripts/setup_peers.sh``; the peers are never plugin
dependencies), with the same worker protocol, synthetic tokens, shape flags (``--layers
--embed-dim --ffn-dim --heads --seq-len --batch-size --vocab-size``), precision, optimizer
(Adam, lr 1e-4) and JSON figures as our archs: a training update is the peer's own forward with
its loss, backward and ``optimizer.step()``. Options of the peer's own go through ``--set
peer.NAME:key=value`` under our option names (``attention_head_dim``, ``memory_size``, ...;
``OPTIONS`` below), with layer indices 0-based and negative from the top, as ours.

* ``peer.memorizing_transformers``: lucidrains/memorizing-transformers-pytorch's
  ``MemorizingTransformer``. Its kNN memory is one faiss ``IndexHNSWFlat`` per lane on the CPU
  (keys of one shared head, multi-query: it stores D keys per lane, we store D per lane *and*
  head) and an ``np.memmap`` of the pairs; it **empties itself** once more than D entries were
  added (``cap_num_entries``). Before timing it is filled by streaming ``fill_segments``
  segments (forward, no gradient): as many as fit without an emptying during the warm-up and
  the timed updates, so the timed updates search between ``entries`` and D entries per lane.
  The XL memory (``xl_max_memories``, default W = seq_len) gives every layer the previous
  segment's keys, as our XL cache.
* ``peer.block_recurrent``: lucidrains/block-recurrent-transformer-pytorch's
  ``BlockRecurrentTransformer`` (one recurrent layer, block width W, M states), its XL memories
  and states carried from one update to the next, as ours; ``use_flash_attn`` on by default (its
  ``scaled_dot_product_attention`` path; the library's default, off, is an einsum attention).

    .venv/bin/python benchmarks/throughput.py --task language_modeling \
        --archs txl_sliding_window_small,memorizing_small,peer.memorizing_transformers ...
"""
import importlib
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.throughput import (PEER_PREFIX, clocked_seconds, device_sync, peak_memory, rss_mb, serve_worker,  # noqa: E402
                                   timed_repeats)

# our option names, with the defaults of our small presets (Meliad small_37M)
OPTIONS = {
    "memorizing_transformers": {"attention_head_dim": 64, "memory_size": 32768, "memory_layers": -4,
                                "memory_neighbors": 32, "xl_max_memories": None, "fill_segments": None},
    "block_recurrent": {"attention_head_dim": 64, "window_length": 512, "num_states": None,
                        "recurrent_layers": -3, "use_flash_attn": True},
}
DEFAULT_SHAPE = {"layers": 12, "embed_dim": 512, "heads": 8}


def peer_options(name: str, overrides: dict) -> dict:
    """The peer's options: defaults, then ``--set`` values (typed like the defaults)."""
    defaults = OPTIONS[name]
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"--set {PEER_PREFIX}{name}:{unknown[0]}=...: not an option of this peer "
                         f"(options: {', '.join(defaults)})")
    out = dict(defaults)
    for key, value in overrides.items():
        text = str(value).lower()
        out[key] = text == "true" if text in ("true", "false") else int(value)
    return out


def model_shape(spec: dict) -> dict:
    shape = {k: spec["shape"].get(k) or v for k, v in DEFAULT_SHAPE.items()}
    d = shape["embed_dim"]
    ffn = spec["shape"].get("ffn_dim") or 4 * d
    if ffn % d:
        raise ValueError(f"--ffn-dim {ffn}: the peers take the MLP width as a multiple of --embed-dim {d}")
    return {**shape, "ff_mult": ffn // d}


def one_based(index: int, layers: int, flag: str) -> int:
    """Our 0-based (negative from the top) layer index as the peers' 1-based layer number."""
    if not -layers <= index < layers:
        raise ValueError(f"{flag} {index} is out of range for --layers {layers}")
    return index % layers + 1


class MemorizingTransformers:
    """memorizing-transformers-pytorch: builds, fills and trains ``MemorizingTransformer``."""

    package, module = "memorizing-transformers-pytorch", "memorizing_transformers_pytorch"

    def __init__(self, lib, spec: dict, device, work_dir: str):
        o, s = peer_options("memorizing_transformers", spec["overrides"]), model_shape(spec)
        T, B = spec["seq_len"], spec["batch_size"]
        self.size, self.seq_len = o["memory_size"], T
        self.xl = T if o["xl_max_memories"] is None else o["xl_max_memories"]
        layer = one_based(o["memory_layers"], s["layers"], "memory_layers")
        self.model = lib.MemorizingTransformer(
            num_tokens=spec["vocab_size"], dim=s["embed_dim"], depth=s["layers"], heads=s["heads"],
            dim_head=o["attention_head_dim"], ff_mult=s["ff_mult"], memorizing_layers=(layer,),
            max_knn_memories=self.size, num_retrieved_memories=o["memory_neighbors"],
            xl_max_memories=self.xl, knn_memories_directory=work_dir, attn_dropout=0.0, ff_dropout=0.0).to(device)
        self.memories = self.model.create_knn_memories(batch_size=B)
        self.xl_memories = None
        timed = spec["warmup"] + (spec["repeats"] + 1) * spec["steps"]  # warm-up, timed and profiled updates
        self.fill_segments = o["fill_segments"]
        if self.fill_segments is None:  # as full as it stays without emptying itself during timing
            self.fill_segments = max(self.size // T - timed, 0) + (1 if self.xl else 0)
        self.note = (f"kNN memory of {self.size:,} entries per lane (one shared key head, faiss IndexHNSWFlat "
                     f"on the CPU, layer {layer} of {s['layers']}), k {o['memory_neighbors']}, XL memory "
                     f"{self.xl} in every layer, untied output layer; filled with {self.fill_segments} segments "
                     "before timing" + (" (D is below the timed updates' tokens: the index empties itself during "
                                        "timing)" if self.size // T < timed else ""))

    def entries(self) -> int:
        """Entries of the fullest lane's faiss index now (the fewest, over lanes)."""
        return int(min(knn.index.ntotal for knn in self.memories[0].knns))

    def forward(self, tokens, labels):
        out = self.model(tokens, knn_memories=self.memories, xl_memories=self.xl_memories, labels=labels)
        loss, self.xl_memories = out if isinstance(out, tuple) else (out, None)
        return loss

    def fill(self, tokens, labels) -> dict:
        import torch

        with torch.no_grad():
            for _ in range(self.fill_segments):
                self.forward(tokens, labels)
        return {"method": "segments", "segments": self.fill_segments, "memory_size": self.size,
                "entries_per_lane": self.entries()}

    def memory_calls(self):
        """The kNN memory's own work (faiss search and add, memmap reads and writes, transfers)."""
        return [(type(self.memories[0]), "search"), (type(self.memories[0]), "add")]


class BlockRecurrent:
    """block-recurrent-transformer-pytorch: builds and trains ``BlockRecurrentTransformer``."""

    package, module = "block-recurrent-transformer-pytorch", "block_recurrent_transformer_pytorch"

    def __init__(self, lib, spec: dict, device, work_dir: str):
        o, s = peer_options("block_recurrent", spec["overrides"]), model_shape(spec)
        W, T = o["window_length"], spec["seq_len"]
        if T % W:
            raise ValueError(f"--seq-len {T} must be a multiple of window_length {W} (block width)")
        states = o["num_states"] or W
        layer = one_based(o["recurrent_layers"], s["layers"], "recurrent_layers")
        self.model = lib.BlockRecurrentTransformer(
            num_tokens=spec["vocab_size"], dim=s["embed_dim"], depth=s["layers"], heads=s["heads"],
            dim_head=o["attention_head_dim"], ff_mult=s["ff_mult"], max_seq_len=T, block_width=W,
            num_state_vectors=states, recurrent_layers=(layer,), use_flash_attn=o["use_flash_attn"]).to(device)
        self.xl_memories, self.states = [], []
        self.note = (f"recurrent layer {layer} of {s['layers']}, block width {W}, {states} states, "
                     f"use_flash_attn {o['use_flash_attn']} (SDPA), untied output layer; XL memories and states "
                     "carried across updates")

    def forward(self, tokens, labels):
        import torch

        stream = torch.cat([tokens, labels[:, -1:]], 1)  # the peer shifts its input itself
        loss, self.xl_memories, self.states = self.model(stream, return_loss=True, xl_memories=self.xl_memories,
                                                         states=self.states)
        return loss

    def fill(self, tokens, labels):
        return None

    def memory_calls(self):
        return []


PEERS = {"memorizing_transformers": MemorizingTransformers, "block_recurrent": BlockRecurrent}


def run_peer(spec: dict, channel, lib=None, go=None) -> dict:
    """Build the peer of ``spec["arch"]`` (``lib``: its module, imported by default) and time its
    training updates like ``throughput.run_worker``; returns the same figures."""
    import torch

    name = spec["arch"][len(PEER_PREFIX):]
    if name not in PEERS:
        raise ValueError(f"--archs {spec['arch']}: unknown peer (known: {', '.join(PEER_PREFIX + p for p in PEERS)})")
    peer_class = PEERS[name]
    lib = lib or importlib.import_module(peer_class.module)
    if spec["precision"] == "fp16":
        raise ValueError(f"{spec['arch']}: precision fp16 (fairseq's FP16Optimizer) has no peer equivalent; use bf16")
    cuda = spec["device"] == "cuda"
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(0)
    B, T, V = spec["batch_size"], spec["seq_len"], spec["vocab_size"]
    tokens = torch.randint(4, V - 1, (B, T + 1), generator=g).to(device)  # >= 1: the peers' pad id is 0
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    rss0 = rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(dir=spec.get("tmp")) as work_dir:
        peer = peer_class(lib, spec, device, work_dir)
        model = peer.model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        fill = peer.fill(inputs, labels)
        bf16 = spec["precision"] == "bf16"

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = peer.forward(inputs, labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        sync = device_sync(cuda)
        times = timed_repeats(step, spec, channel, sync, go)
        run = {
            "arch": spec["arch"], "label": spec["label"], "precision": spec["precision"], "overrides": spec["overrides"],
            "params": sum(p.numel() for p in model.parameters()), "flops_per_token": None,
            "step_times_s": [t / spec["steps"] for t in times], **peak_memory(cuda, rss0),
            "peer": {"package": peer.package, "version": _version(peer.package), "note": peer.note},
        }
        if fill is not None:
            entries_timed = peer.entries()
            spent, total = clocked_seconds(peer.memory_calls(), step, spec["steps"], sync)
            share = sum(spent) / total
            run["memory"] = {"fill": fill, "time_share_forward": share, "flops_share": None,
                             "profiled_updates": spec["steps"],
                             "entries_per_lane_timed": [fill["entries_per_lane"], entries_timed]}
    return run


def _version(package: str) -> str:
    try:
        return version(package)
    except Exception:  # a stand-in library (tests)
        return "not installed"


if __name__ == "__main__":
    if sys.argv[1:2] != ["--worker"] or len(sys.argv) != 3:
        raise SystemExit("usage: benchmarks/peers.py --worker SPEC.json (started by benchmarks/throughput.py)")
    serve_worker(sys.argv[2], run_peer)
