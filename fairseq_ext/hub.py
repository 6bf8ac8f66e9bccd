"""Load any masked LM of the plugin in a REPL and fill masks with clean, whole-word answers.

    from fairseq_ext import hub
    lm = hub.from_pretrained("checkpoints/quickstart")          # checkpoint_best.pt
    lm.fill_mask("The man walked into the <mask>.", topk=5)

``from_pretrained`` goes through stock ``RobertaModel.from_pretrained`` (with the plugin's
user dir and the sentencepiece model found next to the checkpoint or the data), and returns
a ``RobertaHubInterface`` subclass. Its ``fill_mask`` fixes what the stock one gets wrong with a
sentencepiece vocabulary (FAIRSEQ_NOTES): text glued after ``<mask>`` (``"<mask>."``) is encoded
as a continuation, not as a new word ``▁.``; the answer is a word when the mask stands alone
(continuation pieces when it is glued to a word), never a structural symbol, so exactly
``topk`` answers come back; answers carry no ``▁`` and no stray spaces.
"""
import logging
from pathlib import Path
from typing import List, Tuple

import torch
from fairseq import utils
from fairseq.models.roberta import RobertaHubInterface, RobertaModel

from fairseq_ext.checkpoints import checkpoint_arch, is_registered, unknown_arch_error

MASK = "<mask>"
WORD_START = "\u2581"
SPM_FILE = "sentencepiece.bpe.model"
USER_DIR = str(Path(__file__).resolve().parent)


def find_sentencepiece_model(*dirs: Path) -> Path:
    for d in dirs:
        if d is not None and (Path(d) / SPM_FILE).is_file():
            return Path(d) / SPM_FILE
    raise FileNotFoundError(
        f"no {SPM_FILE} in {', '.join(str(d) for d in dirs if d is not None)}: pass "
        f"sentencepiece_model=PATH (fairseq_ext.data.prepare writes it into the data dir)"
    )


def from_pretrained(model_dir, checkpoint_file: str = "checkpoint_best.pt", data_dir=None,
                    sentencepiece_model=None, **kwargs) -> "FillMaskHubInterface":
    """``RobertaModel.from_pretrained`` with this plugin's defaults; see the module docstring.

    ``data_dir`` holds ``dict.txt`` (default: ``model_dir``).
    """
    model_dir = Path(model_dir)
    data_dir = Path(data_dir) if data_dir is not None else model_dir
    if not (model_dir / checkpoint_file).is_file():
        raise FileNotFoundError(f"checkpoint {model_dir / checkpoint_file} does not exist")
    spm = sentencepiece_model or find_sentencepiece_model(model_dir, data_dir)
    roberta_logger = logging.getLogger("fairseq.models.roberta.model")
    level = roberta_logger.level
    roberta_logger.setLevel(logging.WARNING)  # from_pretrained logs the checkpoint's whole config
    try:
        loaded = RobertaModel.from_pretrained(
            str(model_dir), checkpoint_file, str(data_dir.resolve()), bpe="sentencepiece",
            sentencepiece_model=str(spm), user_dir=kwargs.pop("user_dir", USER_DIR), **kwargs)
    except (IndexError, KeyError) as error:  # fairseq failing to format "Could not infer model type"
        arch = checkpoint_arch(model_dir / checkpoint_file)
        if arch is not None and not is_registered(arch):
            raise unknown_arch_error(arch) from error
        raise
    finally:
        roberta_logger.setLevel(level)
    return FillMaskHubInterface(loaded.cfg, loaded.task, loaded.model).eval()


class FillMaskHubInterface(RobertaHubInterface):
    """RobertaHubInterface whose fill_mask speaks words, for sentencepiece vocabularies."""

    @property
    def sp(self):
        return self.bpe.sp

    def _pieces(self, text: str, glued: bool) -> List[str]:
        """Pieces of ``text``; ``glued`` text continues the previous token (no word start)."""
        pieces = self.sp.encode(text, out_type=str) if text.strip() else []
        if glued and pieces and pieces[0].startswith(WORD_START):
            rest = pieces[0][1:]
            if not rest:
                pieces = pieces[1:]
            elif self.task.source_dictionary.index(rest) != self.task.source_dictionary.unk():
                pieces[0] = rest
        return pieces

    def _ids(self, pieces: List[str]) -> List[int]:
        return [self.task.source_dictionary.index(p) for p in pieces]

    def fill_mask_tokens(self, masked_input: str) -> Tuple[torch.LongTensor, int, bool]:
        """(tokens, mask position, mask starts a word) for a sentence with one ``<mask>``."""
        if masked_input.count(MASK) != 1:
            raise ValueError(f"fill_mask needs exactly one {MASK} in the input, got {masked_input!r}")
        left, right = masked_input.split(MASK)
        word_start = not left or left[-1].isspace()
        left_ids = self._ids(self._pieces(left.rstrip(), glued=False))
        right_ids = self._ids(self._pieces(right.rstrip(), glued=bool(right) and not right[0].isspace()))
        d = self.task.source_dictionary
        ids = [d.bos()] + left_ids + [self.task.mask_idx] + right_ids + [d.eos()]
        return torch.tensor(ids, dtype=torch.long), 1 + len(left_ids), word_start

    def allowed_ids(self, word_start: bool) -> torch.Tensor:
        """Word-initial pieces for a free-standing mask, continuation pieces for a glued one."""
        d = self.task.source_dictionary
        keep = [i for i, sym in enumerate(d.symbols) if i >= d.nspecial and sym != MASK
                and not sym.startswith("madeupword") and sym != WORD_START
                and sym.startswith(WORD_START) == word_start]
        return torch.tensor(keep, dtype=torch.long)

    def fill_mask(self, masked_input: str, topk: int = 5) -> List[Tuple[str, float, str]]:
        """[(filled sentence, probability, answer)] * topk, most probable first."""
        tokens, position, word_start = self.fill_mask_tokens(masked_input)
        if tokens.numel() > self.model.max_positions():
            raise ValueError(f"input is {tokens.numel()} tokens; this model takes at most {self.model.max_positions()}")
        with utils.model_eval(self.model), torch.no_grad():
            logits, _ = self.model(tokens.unsqueeze(0).to(self.device), features_only=False, return_all_hiddens=False)
        probs = logits[0, position].float().softmax(dim=-1)
        allowed = self.allowed_ids(word_start).to(probs.device)
        allowed = allowed[allowed < probs.numel()]
        values, order = probs[allowed].topk(min(topk, allowed.numel()))
        answers = []
        for p, i in zip(values.tolist(), allowed[order].tolist()):
            word = self.task.source_dictionary[i].replace(WORD_START, " ").strip()
            answers.append((masked_input.replace(MASK, word), p, word))
        return answers
