"""docs/RESULTS.md is what benchmarks.results renders: the summary first, no machine's paths."""
import re

from benchmarks import results


def test_results_md_is_the_rendered_summary_and_tables():
    rendered = results.render(results.load_results())
    assert results.RESULTS_MD.read_text() == rendered, "re-run python -m benchmarks.results"
    assert rendered.index("## Summary") < rendered.index("## Training throughput")
    assert not re.search(r"(?<![\w.])/(work|tmp|home)/", rendered)


def test_machine_paths_to_data_become_relative():
    text = "python benchmarks/compare.py --data /srv/me/data-bin/pg-mini; data: `/work/data-bin/pg-mini`"
    assert results.portable(text) == "python benchmarks/compare.py --data data-bin/pg-mini; data: `data-bin/pg-mini`"
