"""Per-book and overall perplexity of a long-document LM, through stock fairseq-eval-lm.

PG-19 results are reported per book and overall, with the model's state (Transformer-XL cache,
kNN memory, recurrent state) carried over each whole book. This runs fairseq's own evaluation
loop (``fairseq_cli.eval_lm.eval_lm``: ``SequenceScorer``, padding dropped, log-probabilities in
base 2) once per document of the split, each streamed on one lane by the ``long_document_lm``
task (its ``--documents`` option); with ``--all-lanes true`` also once over the whole split on
``--batch-size`` lanes, the figure a plain ``fairseq-eval-lm`` run prints (a cross-check that
doubles the time). ``--documents 0,2`` scores only those books. Every option of
``fairseq-eval-lm`` applies.

    python -m fairseq_ext.eval.books data-bin/pg-mini --path checkpoints/txl/checkpoint_best.pt \
        --user-dir fairseq_ext --task long_document_lm --gen-subset test --batch-size 4 \
        --tokens-per-sample 512 --json-out results.json
"""
import json
import logging
import sys
from typing import Dict, List

import torch
from fairseq import checkpoint_utils, options, tasks, utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli.eval_lm import eval_lm
from omegaconf import open_dict

from fairseq_ext.models._common import parse_bool
from fairseq_ext.tasks.long_document_lm import parse_documents

logger = logging.getLogger("fairseq_ext.eval.books")


def load_models(cfg):
    """The checkpoint's model(s) and task, ready for inference, as fairseq-eval-lm loads them."""
    utils.import_user_module(cfg.common)
    task = tasks.setup_task(cfg.task)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [cfg.common_eval.path], arg_overrides=eval(cfg.common_eval.model_overrides), task=task)
    use_cuda = torch.cuda.is_available() and not cfg.common.cpu
    for model in models:
        if use_cuda:
            model.cuda()
        model.prepare_for_inference_(cfg)
    if not hasattr(task, "document_token_counts"):
        raise ValueError(f"--task {cfg.task._name}: per-book evaluation needs --task long_document_lm")
    return models, task


def evaluate(models, task, cfg, split: str, documents: str, lanes: int) -> float:
    """Loss in bits per token of ``documents`` of ``split`` streamed on ``lanes`` lanes."""
    with open_dict(task.args):
        task.args.documents = documents
        task.args.batch_size = task.args.batch_size_valid = lanes
    task.load_dataset(split)
    iterator = task.eval_lm_dataloader(task.dataset(split), batch_size=lanes, num_workers=0)
    result = eval_lm(models=models, source_dictionary=task.source_dictionary, batch_iterator=iterator,
                     target_dictionary=task.target_dictionary, softmax_batch=cfg.eval_lm.softmax_batch)
    return float(result["loss"])


def evaluate_books(models, task, cfg, all_lanes: bool = False) -> Dict:
    """{"books": [{document, tokens, loss_bits, perplexity}], "overall": {...}} (+ "all_lanes")."""
    split = cfg.dataset.gen_subset
    lanes = cfg.dataset.batch_size or 1
    chosen = task.args.documents  # --documents 0,2: only these books (default: every book)
    with open_dict(task.args):  # every book, to count them; --batch-size is optional (1 lane)
        task.args.documents = ""
        task.args.batch_size = task.args.batch_size_valid = lanes
    task.load_dataset(split)
    counts = task.document_token_counts(split)
    selected = parse_documents(chosen, len(counts), f"--gen-subset {split}").tolist()
    books: List[Dict] = []
    for document in selected:
        tokens = int(counts[document])
        loss = evaluate(models, task, cfg, split, str(document), 1)
        books.append({"document": document, "tokens": tokens, "loss_bits": loss, "perplexity": 2 ** loss})
        logger.info("book %d: %d tokens, loss %.4f bits, perplexity %.2f", document, tokens, loss, 2 ** loss)
    overall = sum(b["loss_bits"] * b["tokens"] for b in books) / max(sum(b["tokens"] for b in books), 1)
    result = {"split": split, "books": books,
              "overall": {"tokens": int(counts[selected].sum()), "loss_bits": overall, "perplexity": 2 ** overall}}
    if all_lanes:
        loss = evaluate(models, task, cfg, split, chosen, lanes)
        result["all_lanes"] = {"lanes": lanes, "loss_bits": loss, "perplexity": 2 ** loss}
    return result


def markdown(result: Dict) -> str:
    rows = ["| book | tokens | loss (bits/token) | perplexity |", "|---|---|---|---|"]
    rows += [f"| {b['document']} | {b['tokens']:,} | {b['loss_bits']:.4f} | {b['perplexity']:.2f} |"
             for b in result["books"]]
    o = result["overall"]
    rows.append(f"| **overall** | {o['tokens']:,} | {o['loss_bits']:.4f} | {o['perplexity']:.2f} |")
    if "all_lanes" in result:
        a = result["all_lanes"]
        rows.append(f"| all books on {a['lanes']} lanes (plain fairseq-eval-lm) | | {a['loss_bits']:.4f} | "
                    f"{a['perplexity']:.2f} |")
    return "\n".join(rows)


def main(argv=None) -> Dict:
    parser = options.get_eval_lm_parser()
    parser.add_argument("--json-out", help="write the per-book results to this JSON file")
    parser.add_argument("--all-lanes", type=parse_bool, nargs="?", const=True, default=False, metavar="BOOL",
                        help="also score the whole split on --batch-size lanes, as a plain fairseq-eval-lm "
                             "run does (a cross-check of the per-book figures; doubles the time)")
    args = options.parse_args_and_arch(parser, argv)
    cfg = convert_namespace_to_omegaconf(args)
    models, task = load_models(cfg)
    result = evaluate_books(models, task, cfg, args.all_lanes)
    print(markdown(result))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    main()
