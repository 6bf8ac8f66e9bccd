"""Print fill_mask answers of a trained masked LM of fairseq_ext.

    python examples/fill_mask.py CHECKPOINT_DIR --data DATA_DIR "A sentence with a <mask>." ...
    python examples/fill_mask.py checkpoints/pg-sample-zero-clap-small --checkpoint model.pt "It was a <mask> night."

(the second is the checkpoint shipped with the repository: dict and sentencepiece model beside it).

Loads with ``RobertaModel.from_pretrained`` (through ``fairseq_ext.hub``, which passes the
plugin's user dir and the sentencepiece model), so it works for every masked LM of the plugin.
"""
import argparse

from fairseq_ext import hub


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint_dir")
    p.add_argument("sentences", nargs="+", help="sentences with exactly one <mask> each")
    p.add_argument("--data", help="data dir with dict.txt and sentencepiece.bpe.model (default: checkpoint dir)")
    p.add_argument("--checkpoint", default="checkpoint_best.pt")
    p.add_argument("--topk", type=int, default=5)
    args = p.parse_args()
    lm = hub.from_pretrained(args.checkpoint_dir, args.checkpoint, args.data)
    for sentence in args.sentences:
        print(sentence)
        for filled, prob, word in lm.fill_mask(sentence, topk=args.topk):
            print(f"  {prob:6.3f}  {word:<12} {filled}")


if __name__ == "__main__":
    main()
