"""scripts/reliability_runs.py at toy scale: both measurements run real fairseq-train processes for
two families (a masked and a causal one) and write finite curves, RSS samples and the comparison
figures; the renderer marks a family whose loss went NaN as failing. (That the bf16 run really
computes in bf16 is tests/test_autocast.py's job: at 20 updates fairseq's 3-decimal losses can tie.)"""
import importlib.util
import json
import math

import pytest

from helpers import REPO

spec = importlib.util.spec_from_file_location("reliability_runs", REPO / "scripts" / "reliability_runs.py")
reliability_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reliability_runs)

FAMILIES = "roberta_ext,txl_lm"
TOY = ["--families", FAMILIES, "--updates", "20", "--log-interval", "5", "--validate-interval", "10",
       "--max-valid-steps", "2"]


@pytest.fixture(scope="module")
def measured(book_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reliability")
    for kind in ("precision", "longrun"):
        reliability_runs.main([kind, *TOY, "--out-dir", str(out), "--data", str(book_data)])
    return out, {kind: json.loads((out / f"{kind}.json").read_text()) for kind in ("precision", "longrun")}


def finite(values):
    return values and all(isinstance(x, float) and math.isfinite(x) for x in values)


def test_precision_compares_finite_fp32_and_bf16_curves(measured):
    out, results = measured
    families = results["precision"]["families"]
    assert list(families) == FAMILIES.split(",")
    for family, entry in families.items():
        for name in ("fp32", "bf16"):
            run = entry["runs"][name]
            assert run["updates"] == [5, 10, 15, 20], (family, name)
            assert finite(run["loss"]) and finite(run["valid_loss"]), (family, name)
        figures = entry["figures"]
        assert figures["nan_free_fp32"] and figures["nan_free_bf16"]
        assert 0 <= figures["max_abs_delta_last"] < 1 and 0.9 < figures["final_loss_ratio"] < 1.1, figures
        assert "--bf16-autocast true" in entry["command"]
    assert (out / "precision.png").stat().st_size > 10_000


def test_longrun_samples_rss_and_tokens_per_second(measured):
    out, results = measured
    for family, entry in results["longrun"]["families"].items():
        run = entry["run"]
        assert run["updates"] == [5, 10, 15, 20], family
        assert finite(run["rss_mb"]) and min(run["rss_mb"]) > 50, run["rss_mb"]  # torch + fairseq alone
        assert finite(run["wps"]) and finite(run["loss"])
        assert run["tokens_per_cpu_s"][0] is None and finite(run["tokens_per_cpu_s"][1:])
        # every --validate-interval, and at an epoch's end (book_data is small)
        assert {10, 20} <= set(run["valid_updates"]) and finite(run["valid_loss"]), run
        figures = entry["figures"]
        assert figures["nan_free"] and figures["last_update"] == 20
        assert figures["rss_growth_mb"] == pytest.approx(run["rss_mb"][-1] - run["rss_mb"][0])
        assert math.isfinite(figures["cpu_tps_ratio"]) and math.isfinite(figures["rss_slope_mb_per_1k"])
    assert (out / "longrun.png").stat().st_size > 10_000
    section = reliability_runs.render(out, link_prefix="img/")
    assert "![bf16 vs fp32 loss curves](img/precision.png)" in section
    assert "(img/longrun.png)" in section and "`txl_sliding_window_tiny`" in section


def fabricated(loss_bf16, valid_loss=1.0):
    runs = {name: {"updates": [1, 2, 3], "loss": [3.0, 2.5, 2.0], "valid_loss": [valid_loss], "log_interval": 1}
            for name in ("fp32", "bf16")}
    runs["bf16"]["loss"] = loss_bf16
    figures = reliability_runs.precision_figures(runs["fp32"], runs["bf16"])
    return {"kind": "precision", "updates": 3, "families": {"glom": {"arch": "glom_tiny", "runs": runs,
                                                                      "figures": figures}}}


def row(section, family):
    return next(line for line in section.splitlines() if line.startswith(f"| {family} |"))


def test_render_fails_a_family_whose_loss_went_nan():
    good = reliability_runs.render(results={"precision": fabricated([3.0, 2.5, 2.01])})
    assert row(good, "glom").endswith("| pass |")
    bad = fabricated([3.0, float("nan"), 2.0])
    assert bad["families"]["glom"]["figures"]["nan_free_bf16"] is False
    assert "**FAIL**" in row(reliability_runs.render(results={"precision": bad}), "glom")
    stale = fabricated([3.0, 2.5, 2.0], valid_loss=float("inf"))
    stale["families"]["glom"]["figures"].update(nan_free_fp32=True, nan_free_bf16=True)  # a wrong flag
    assert "**FAIL**" in row(reliability_runs.render(results={"precision": stale}), "glom")


def test_render_fails_a_long_run_with_a_nan_growing_memory_or_falling_throughput():
    def longrun(loss, rss, cpu_tps=(None, 1000.0, 990.0, 1010.0)):
        run = {"updates": [100, 200, 300, 400], "loss": loss, "valid_loss": [2.0], "valid_updates": [400],
               "rss_mb": rss, "wps": [900.0, 1000.0, 400.0, 300.0], "tokens_per_cpu_s": list(cpu_tps)}
        entry = {"arch": "txl_sliding_window_tiny", "run": run, "figures": reliability_runs.longrun_figures(run)}
        result = {"kind": "longrun", "updates": 400, "log_interval": 100, "validate_interval": 400,
                  "families": {"txl_lm": entry}}
        return row(reliability_runs.render(results={"longrun": result}), "txl_lm")

    assert longrun([3.0, 2.8, 2.6, 2.5], [500.0, 501.0, 501.0, 502.0]).endswith("| pass |")
    assert "**FAIL**" in longrun([3.0, 2.8, float("nan"), 2.5], [500.0, 501.0, 501.0, 502.0])
    assert "**FAIL**" in longrun([3.0, 2.8, 2.6, 2.5], [500.0, 550.0, 600.0, 650.0])
    # wall-clock wps fell (other jobs); a fall in tokens per CPU second is the model's own
    assert "**FAIL**" in longrun([3.0, 2.8, 2.6, 2.5], [500.0, 501.0, 501.0, 502.0], (None, 1000.0, 700.0, 500.0))
