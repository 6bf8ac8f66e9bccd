"""Matrix column ``bad_options``: every arch, built through fairseq-train's own parser, refuses
each inconsistent option of its model at build time with a message naming the option (heads
that do not divide the width, a window that does not divide the segment, memory sizes, layer
indices out of range, unknown variant names). A model with no cases here fails the column: its
row stays FAIL until its inconsistent options are listed."""
import pytest

from reliability.archs import params, plugin_archs, representatives
from reliability.test_reliability_checkpoints import data_of, setup

# registered model name -> [(extra flags, text the error must contain)]
CASES = {
    "roberta_ext": [(["--encoder-attention-heads", "3"], "--encoder-attention-heads"),
                    (["--positions", "rotary"], "--positions"),
                    (["--self-mask-prob", "1.5"], "--self-mask-prob")],
    "glom": [(["--encoder-embed-dim", "30"], "--encoder-embed-dim"),
             (["--encoder-layers", "0"], "--encoder-layers"),
             (["--glom-aggregation", "mean"], "--glom-aggregation")],
    "albert_ext": [(["--encoder-attention-heads", "3"], "--encoder-attention-heads"),
                   (["--encoder-layers", "0"], "--encoder-layers")],
    "elc_bert": [(["--elc-variant", "bogus"], "--elc-variant"),
                 (["--encoder-attention-heads", "5"], "--encoder-attention-heads"),
                 (["--position-bucket-size", "7"], "--position-bucket-size")],
    "txl_lm": [(["--window-length", "5"], "--window-length"),
               (["--decoder-attention-heads", "0"], "--decoder-attention-heads"),
               (["--decoder-layers", "0"], "--decoder-layers")],
    "memorizing_lm": [(["--memory-layers", "2"], "--memory-layers"),
                      (["--memory-layers", "-3"], "--memory-layers"),
                      (["--memory-size", "24"], "--memory-size"),
                      (["--memory-topk", "faiss"], "--memory-topk")],
    "block_recurrent_lm": [(["--recurrent-layers", "2"], "--recurrent-layers"),
                           (["--num-states", "0"], "--num-states"),
                           (["--gate-type", "gru"], "--gate-type"),
                           (["--state-update", "triple"], "--state-update"),
                           (["--xl-cache", "false"], "--xl-cache")],
}


def model_name(arch) -> str:
    from fairseq.models import MODEL_REGISTRY

    return next(name for name, cls in MODEL_REGISTRY.items() if cls is plugin_archs()[arch])


@pytest.mark.parametrize("arch", params(representatives()))
def test_bad_options(arch, tiny_data, book_data, capsys):
    """Each inconsistent option of the arch's model (CASES) fails at build time naming the flag."""
    cases = CASES.get(model_name(arch))
    assert cases, f"no inconsistent-option cases for model {model_name(arch)}: add them to CASES"
    data = data_of(arch, tiny_data, book_data)
    for flags, option in cases:
        with pytest.raises((ValueError, SystemExit)) as failed:
            setup(arch, data, extra=flags)
        # argparse refuses a value outside an option's choices on stderr (SystemExit 2)
        message = capsys.readouterr().err if failed.type is SystemExit else str(failed.value)
        assert option in message, f"{flags}: {message}"
