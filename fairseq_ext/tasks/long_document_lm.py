"""``long_document_lm``: causal LM over whole documents, each batch lane streaming one document
segment after segment, for models that carry state across segments (Transformer-XL caches,
Memorizing / Block-Recurrent Transformer memories; google-research/meliad ``text_dataset.py``).

The pattern is fairseq's ``examples/truncated_bptt`` (every dataset item is a whole batch, an
``EpochBatchIterator`` over ``[[i] for i in range(len)]`` without shuffling, data-parallel
ranks taking disjoint lanes), with documents instead of one concatenated stream: batches carry
``net_input.start_of_sequence`` (B,), True where a lane's segment is the first of a document,
where the model resets its state. The layout is in ``fairseq_ext/data/document_stream.py`` and
``docs/families/long_document_lm.md``.

Behaviours:

* Training (``--train-subset``) lists the documents in a new permutation every epoch, drawn
  from (``--seed``, epoch); other splits keep the file's order, so validation is identical
  every time. More global lanes (``--batch-size`` x data-parallel ranks) than documents is an
  error for training; for other splits the extra lanes get all-pad segments (allowed, since a
  test split may hold a single book).
* ``fairseq-eval-lm --task long_document_lm --batch-size B --tokens-per-sample L`` streams the
  same way: stock ``SequenceScorer`` drops the (right-only) padding, so every document token is
  scored once. ``--documents 3`` evaluates one document (e.g. one book) of the split.
* A model without state (its forward takes no ``start_of_sequence``, e.g. stock
  ``transformer_lm``) gets the same segments without the flag, so it can be trained and
  evaluated on the same stream as a baseline.
* The data-parallel rank and size come from ``torch.distributed`` when they are not given, and
  are not written back into the config, so a checkpoint never carries one rank's lanes.
"""
import inspect
import logging
import os
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np
import torch
from fairseq import utils
from fairseq.data import (AppendTokenDataset, IdDataset, ListDataset, NestedDictionaryDataset, NumelDataset,
                          PadDataset, PrependTokenDataset, StripTokenDataset, data_utils, iterators)
from fairseq.distributed import utils as distributed_utils
from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask
from omegaconf import II

from fairseq_ext.checkpoints import require_registered
from fairseq_ext.data.document_stream import DocumentIndex, DocumentStreamDataset

logger = logging.getLogger(__name__)

# LanguageModelingConfig options that do not apply to whole-document streaming: (name, default).
INAPPLICABLE = (("sample_break_mode", "none"), ("shorten_method", "none"), ("add_bos_token", False),
                ("pad_to_fixed_length", False), ("pad_to_fixed_bsz", False),
                ("self_target", False), ("past_target", False))


@dataclass
class LongDocumentLMConfig(LanguageModelingConfig):
    """language_modeling's options; --tokens-per-sample is the segment length L and
    --batch-size (--batch-size-valid outside training) the number of lanes per process."""

    documents: str = field(default="", metadata={
        "help": "comma-separated document indices of each loaded split to stream, in this order "
                "(e.g. 0,3,5; empty = all), e.g. to evaluate one book with fairseq-eval-lm"})
    data_parallel_rank: Optional[int] = field(default=None, metadata={
        "help": "this process's data-parallel rank; unset = from torch.distributed (as truncated_bptt_lm)"})
    data_parallel_size: Optional[int] = field(default=None, metadata={
        "help": "number of data-parallel processes sharing the lanes; unset = from torch.distributed"})
    train_subset: str = II("dataset.train_subset")


def parse_documents(text: str, num_documents: int, where: str) -> np.ndarray:
    """Indices of --documents (all documents when empty), checked against the split."""
    if not text.strip():
        return np.arange(num_documents)
    parts = [p.strip() for p in text.split(",")]
    if not all(p.lstrip("-").isdigit() for p in parts):
        raise ValueError(f"--documents {text!r}: expected comma-separated document indices, e.g. 0,3,5")
    indices = [int(p) for p in parts]
    bad = [i for i in indices if not 0 <= i < num_documents]
    if bad:
        raise ValueError(f"--documents: index {bad[0]} is out of range: {where} has {num_documents} "
                         f"documents (0..{num_documents - 1})")
    if len(set(indices)) < len(indices):
        raise ValueError(f"--documents {text!r}: a document is listed twice")
    return np.array(indices, dtype=np.int64)


@register_task("long_document_lm", dataclass=LongDocumentLMConfig)
class LongDocumentLMTask(LanguageModelingTask):
    """language_modeling with per-lane document streaming and a start-of-document flag."""

    def __init__(self, args, dictionary, output_dictionary=None, targets=None):
        super().__init__(args, dictionary, output_dictionary, targets)
        for name, default in INAPPLICABLE:
            if getattr(args, name, default) != default:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: long_document_lm "
                                 "streams whole documents; the option does not apply")
        if args.tokens_per_sample < 1:
            raise ValueError(f"--tokens-per-sample must be at least 1, got {args.tokens_per_sample}")
        self.model_carries_state = True  # until build_model sees a model without start_of_sequence

    def build_model(self, cfg, from_checkpoint=False):
        """A model whose forward takes no ``start_of_sequence`` (stock ``transformer_lm``) has no
        state to reset: its batches come without the flag, each segment read on its own."""
        require_registered(cfg)  # a checkpoint of an arch this version lacks: say what to do
        model = super().build_model(cfg, from_checkpoint)
        self.model_carries_state = "start_of_sequence" in inspect.signature(model.forward).parameters
        for dataset in self.datasets.values():
            if isinstance(dataset, DocumentStreamDataset):
                dataset.flag_starts = self.model_carries_state
        return model

    # ------------------------------------------------------------------ datasets
    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        """Index the documents of ``split`` and schedule them on this rank's lanes."""
        paths = utils.split_paths(self.args.data)
        split_path = os.path.join(paths[(epoch - 1) % len(paths)], split)
        where = f"split {split} ({split_path}.bin)"
        if os.path.isfile(f"{split_path}.bin") and os.path.getsize(f"{split_path}.bin") == 0:
            raise ValueError(f"long_document_lm: {where} holds no documents (the file is empty)")
        tokens = data_utils.load_indexed_dataset(split_path, self.dictionary, self.args.dataset_impl,
                                                 combine=combine)
        if tokens is None:
            raise FileNotFoundError(f"long_document_lm: split {split} not found ({split_path}.bin/.idx)")
        index = DocumentIndex.from_sizes(tokens.sizes)
        if len(index) == 0:
            raise ValueError(f"long_document_lm: {where} holds no documents (no non-empty line)")
        documents = parse_documents(self.args.documents, len(index), where)
        training = split == self.args.train_subset
        lanes = self.lanes_per_rank(training)
        rank, world_size = self.data_parallel_rank_and_size()
        if training and lanes * world_size > len(documents):
            raise ValueError(f"--batch-size {lanes} x {world_size} data-parallel processes = "
                             f"{lanes * world_size} lanes, but {where} has only {len(documents)} "
                             "documents to stream; lower --batch-size")
        dataset = DocumentStreamDataset(
            tokens, index, documents, self.args.tokens_per_sample, lanes, rank, world_size,
            pad=self.dictionary.pad(), eos=self.dictionary.eos(),
            shuffle_seed=self.args.seed if training else None, epoch=epoch)
        dataset.flag_starts = self.model_carries_state
        logger.info("%s: %d documents (%d tokens; %d empty skipped) on %d x %d lanes of %d tokens: "
                    "%d steps", where, len(documents), int(index.num_tokens[documents].sum()),
                    index.num_empty, lanes, world_size, self.args.tokens_per_sample, len(dataset))
        self.datasets[split] = dataset

    def lanes_per_rank(self, training: bool) -> int:
        lanes = self.args.batch_size if training else (self.args.batch_size_valid or self.args.batch_size)
        if lanes is None or lanes < 1:
            raise ValueError(f"long_document_lm needs --batch-size (lanes per process, >= 1), got {lanes}")
        return lanes

    def data_parallel_rank_and_size(self) -> Tuple[int, int]:
        """--data-parallel-rank/size, else torch.distributed's data-parallel group, else (0, 1)."""
        rank, size = self.args.data_parallel_rank, self.args.data_parallel_size
        if rank is None and size is None:
            if not torch.distributed.is_initialized():
                return 0, 1
            return distributed_utils.get_data_parallel_rank(), distributed_utils.get_data_parallel_world_size()
        if rank is None or size is None or not 0 <= rank < size:
            raise ValueError(f"--data-parallel-rank {rank} / --data-parallel-size {size}: give both, "
                             "with 0 <= rank < size")
        return rank, size

    def document_token_counts(self, split: str) -> np.ndarray:
        """(D,) token count of every document of a loaded split by index (what eval-lm scores)."""
        return self.dataset(split).document_token_counts()

    def build_dataset_for_inference(self, src_tokens, src_lengths, **kwargs):
        """language_modeling's (input [eos] + tokens, target tokens + [pad]; for hub ``sample`` and
        ``score``) without its TokenBlockDataset, whose eos mode fails under numpy 2 (np.compat)."""
        eos, pad = self.source_dictionary.eos(), self.source_dictionary.pad()
        tokens = StripTokenDataset(ListDataset(src_tokens, src_lengths), eos)
        source = PrependTokenDataset(tokens, eos)
        return NestedDictionaryDataset({
            "id": IdDataset(),
            "net_input": {"src_tokens": PadDataset(source, pad_idx=pad, left_pad=False),
                          "src_lengths": NumelDataset(source, reduce=False)},
            "target": PadDataset(AppendTokenDataset(tokens, pad), pad_idx=pad, left_pad=False),
        }, sizes=[np.array(src_lengths)])

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        """language_modeling's, with every prompt cut before its first eos: inside a document an
        eos only ends a paragraph, but in a prompt it would end the hypothesis. So
        ``fairseq-generate --gen-subset test --prefix-size N`` prompts each segment of the stream
        with its first N tokens (up to a paragraph end) and continues it as a new document;
        without --prefix-size the prompt is the segment itself, less a document's leading eos."""
        eos, pad = self.source_dictionary.eos(), self.source_dictionary.pad()
        if prefix_tokens is None and sample["net_input"]["src_tokens"].nelement():
            src = sample["net_input"]["src_tokens"]
            shifted = torch.cat([src[:, 1:], src.new_full((len(src), 1), pad)], 1)
            prefix_tokens = torch.where(src[:, :1].eq(eos), shifted, src)
        if prefix_tokens is not None:
            prefix_tokens = prefix_tokens.masked_fill(prefix_tokens.eq(eos).cumsum(1) > 0, pad)
            # no all-pad columns: the generator allows eos (ignores --min-len) inside the prefix
            prefix_tokens = prefix_tokens[:, :int(prefix_tokens.ne(pad).sum(1).max())]
        return super().inference_step(generator, models, sample, prefix_tokens, constraints)

    # ------------------------------------------------------------------ iterators
    def get_batch_iterator(self, dataset, **kwargs):
        """One dataset item per batch, in order, already sharded by data-parallel rank.

        The batch list is built per epoch after ``dataset.set_epoch`` (a callable sampler), so an
        epoch-2 iterator, or one iterator moved to its next epoch, sees epoch 2's schedule and
        length. Other datasets (e.g. hub ``sample``'s) take language_modeling's path."""
        if not isinstance(dataset, DocumentStreamDataset):
            return super().get_batch_iterator(dataset, **kwargs)
        self.check_iterator_request(dataset, kwargs)
        epoch = kwargs.get("epoch", 1)
        dataset.set_epoch(epoch)

        def one_batch_per_step(dataset, epoch):
            dataset.set_epoch(epoch)
            return [[step] for step in range(len(dataset))]

        return iterators.EpochBatchIterator(
            dataset=dataset, collate_fn=dataset.collater, batch_sampler=one_batch_per_step,
            num_workers=kwargs.get("num_workers", 0), epoch=epoch,
            buffer_size=kwargs.get("data_buffer_size", 0), disable_shuffling=True,
            skip_remainder_batch=kwargs.get("skip_remainder_batch", False),
            reuse_dataloader=False)  # a reused DataLoader's workers would keep the old epoch's copy

    def check_iterator_request(self, dataset: DocumentStreamDataset, kwargs) -> None:
        """The dataset fixed lanes and shards at load time; refuse asking for others."""
        num_shards = kwargs.get("num_shards", 1)
        if num_shards not in (1, dataset.world_size):
            raise ValueError(f"long_document_lm shards lanes by data-parallel rank ({dataset.world_size} "
                             f"processes); --num-shards {num_shards} / --shard-id do not apply")
        asked = kwargs.get("max_sentences")
        if asked is not None and asked != dataset.lanes_per_rank:
            raise ValueError(f"long_document_lm: the split was loaded with {dataset.lanes_per_rank} lanes "
                             f"(--batch-size / --batch-size-valid) but {asked} were asked for")

    def eval_lm_dataloader(self, dataset, max_tokens=36000, batch_size=None, max_positions=None,
                           num_shards=1, shard_id=0, num_workers=1, data_buffer_size=10,
                           context_window=0):
        """fairseq-eval-lm's iterator: the split's stream in order, one epoch."""
        if not isinstance(dataset, DocumentStreamDataset):
            return super().eval_lm_dataloader(dataset, max_tokens, batch_size, max_positions, num_shards,
                                              shard_id, num_workers, data_buffer_size, context_window)
        if context_window > 0:
            raise ValueError("--context-window does not apply to long_document_lm: each lane streams its "
                             "document in order and the model's memory carries the context")
        return self.get_batch_iterator(
            dataset=dataset, max_sentences=batch_size, num_shards=num_shards, shard_id=shard_id,
            num_workers=num_workers, data_buffer_size=data_buffer_size).next_epoch_itr(shuffle=False)
