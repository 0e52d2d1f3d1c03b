"""The results index gathers each experiment's headline numbers."""

from __future__ import annotations

import json
from pathlib import Path

from ipguard.report_index import build


def test_index_lists_every_experiment_and_method(workspace: Path) -> None:
    text = build(workspace / "reports")
    metrics = json.loads((workspace / "reports/tiny/metrics.json").read_text())["methods"]
    assert "dvc exp run -S experiment=tiny" in text
    for method, m in metrics.items():
        assert f"| {method} | {m['overall']['aruc']:.3f} |" in text
    cost = json.loads((workspace / "reports/tiny/generation_cost.json").read_text())
    assert cost["ipguard"]["converged_share"] == 1.0 and cost["ipguard"]["n"] == 30
    assert f"| tiny | ipguard | 30 | {cost['ipguard']['seconds']:.3f} |" in text
