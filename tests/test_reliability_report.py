"""scripts/reliability.py renders docs/RELIABILITY.md from a junit report: a failing or erroring
test case is FAIL in its (arch, check) cell, an arch without results is "not run" and the page
says the run was partial."""
from scripts import reliability

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="5">
<testcase classname="tests.reliability.test_reliability_checkpoints" name="test_checkpoint[glom_tiny]" time="1"/>
<testcase classname="tests.reliability.test_reliability_checkpoints" name="test_checkpoint[albert_tiny]" time="1">
  <failure message="AssertionError: state.encoder.weight">traceback</failure></testcase>
<testcase classname="tests.reliability.test_reliability_checkpoints" name="test_hub_reload[glom_tiny]" time="1">
  <error message="fixture failed">traceback</error></testcase>
<testcase classname="tests.reliability.test_reliability_checkpoints" name="test_hub_reload[albert_tiny]" time="1"/>
<testcase classname="tests.reliability.test_reliability_kill" name="test_killed_saves_leave_a_loadable_checkpoint" time="1"/>
</testsuite></testsuites>
"""


def page(tmp_path, archs):
    (tmp_path / "r.xml").write_text(JUNIT)
    cases = reliability.read_junit(tmp_path / "r.xml")
    return reliability.render(cases, archs, "today", "abc123", "a machine", "python -m scripts.reliability")


def row(text, arch):
    return next(line for line in text.splitlines() if line.startswith(f"| `{arch}` |"))


def test_failures_and_errors_are_fail_cells(tmp_path):
    text = page(tmp_path, ["glom_tiny", "albert_tiny"])
    assert "| arch | checkpoint | hub_reload |" in text
    assert row(text, "glom_tiny") == "| `glom_tiny` | pass | **FAIL** |"
    assert row(text, "albert_tiny") == "| `albert_tiny` | **FAIL** | pass |"
    assert "3 passed, 2 failed, 0 skipped" in text
    assert "AssertionError: state.encoder.weight" in text and "partial run" not in text
    assert "| `test_killed_saves_leave_a_loadable_checkpoint` | pass |" in text
    assert "abc123" in text and "a machine" in text and "today" in text


def test_archs_without_results_are_not_run_and_the_page_says_partial(tmp_path):
    text = page(tmp_path, ["glom_tiny", "albert_tiny", "txl_sliding_window_tiny"])
    assert row(text, "txl_sliding_window_tiny") == "| `txl_sliding_window_tiny` | not run | not run |"
    assert "**partial run**: 2 of 3 registered archs run" in text


def test_main_renders_only_from_a_junit_file(tmp_path):
    (tmp_path / "r.xml").write_text(JUNIT)
    assert reliability.main(["--from-junit", str(tmp_path / "r.xml"), "--out", str(tmp_path / "R.md")]) == 0
    text = (tmp_path / "R.md").read_text()
    assert row(text, "albert_tiny").startswith("| `albert_tiny` | **FAIL**")
    assert "| `roberta_ext_baseline_large` | not run | not run |" in text  # every registered arch is a row


def test_a_check_without_a_case_for_a_run_arch_is_not_applicable(tmp_path):
    junit = JUNIT.replace('<testcase classname="tests.reliability.test_reliability_checkpoints" name="test_hub_reload[albert_tiny]" time="1"/>', "")
    (tmp_path / "r.xml").write_text(junit)
    text = reliability.render(reliability.read_junit(tmp_path / "r.xml"), ["glom_tiny", "albert_tiny"], "today", "abc",
                              "m", "cmd")
    assert row(text, "albert_tiny") == "| `albert_tiny` | **FAIL** | n/a |"
