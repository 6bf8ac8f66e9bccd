"""``--bf16-autocast true`` on CPU: every family's matmuls run in bf16 while the weights and the
logits stay fp32, the logits stay close to the fp32 model's, and the gradients are fp32 and finite."""
import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from helpers import USER_DIR, build_tiny_lm

CAUSAL = ["txl_sliding_window_tiny", "memorizing_tiny", "block_recurrent_tiny"]
MASKED = ["roberta_ext_baseline_tiny", "glom_tiny", "albert_tiny", "elc_bert_tiny"]


def build_masked(data, arch, bf16: bool):
    argv = [str(data), "--user-dir", USER_DIR, "--task", "masked_lm", "--arch", arch, "--tokens-per-sample", "32",
            "--bf16-autocast", str(bf16).lower()]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    return task.build_model(cfg.model), len(task.source_dictionary)


def linear_output_dtypes(model):
    """Record the dtype of every nn.Linear output during the next forward."""
    seen = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


def check_pair(bf16_model, fp32_model, tokens, **kwargs):
    """Same weights, eval mode (no dropout, no carried state), the same tokens through both."""
    fp32_model.load_state_dict(bf16_model.state_dict())
    seen = linear_output_dtypes(bf16_model)
    logits = bf16_model(tokens, **kwargs)[0]
    with torch.no_grad():
        reference = fp32_model(tokens, **kwargs)[0]
    assert seen and set(seen) == {torch.bfloat16}, seen
    assert logits.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in bf16_model.parameters())
    error = (logits.detach() - reference).norm() / reference.norm()
    assert 0 < error < 0.02, error  # bf16 rounding (8-bit mantissa), not a different model
    logits.float().logsumexp(-1).mean().backward()
    grads = [p.grad for p in bf16_model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("arch", CAUSAL)
def test_causal_lm_autocasts_on_cpu_with_fp32_weights_and_logits(arch):
    bf16 = build_tiny_lm(arch, 64, seed=0, vocab=50, bf16_autocast=True)
    fp32 = build_tiny_lm(arch, 64, seed=0, vocab=50, bf16_autocast=False)
    tokens = torch.randint(4, 50, (2, 64), generator=torch.Generator().manual_seed(1))
    check_pair(bf16, fp32, tokens)


@pytest.mark.parametrize("arch", MASKED)
def test_masked_lm_autocasts_on_cpu_with_fp32_weights_and_logits(book_data, arch):
    bf16, vocab = build_masked(book_data, arch, True)
    fp32, _ = build_masked(book_data, arch, False)
    bf16.eval(), fp32.eval()
    tokens = torch.randint(4, vocab, (2, 32), generator=torch.Generator().manual_seed(1))
    check_pair(bf16, fp32, tokens, masked_tokens=torch.ones_like(tokens, dtype=torch.bool))
