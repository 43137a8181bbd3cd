"""The metric views at every hook, the validate/test results and metrics.csv, against Lightning's recording.

tests/data/logging_lightning.json holds what PyTorch Lightning 2.6 produced for the scenarios in
tests/data/logging_scenarios.py (python tests/data/logging_scenarios.py re-records it).
"""

import importlib.util
import json
import os

import pytest

import fulmen

DATA = os.path.join(os.path.dirname(__file__), "..", "data")
spec = importlib.util.spec_from_file_location("logging_scenarios", os.path.join(DATA, "logging_scenarios.py"))
scenarios = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scenarios)
with open(os.path.join(DATA, "logging_lightning.json")) as f:
    LIGHTNING = json.load(f)


@pytest.mark.parametrize("scenario", scenarios.SCENARIOS)
def test_views_match_lightning_at_every_hook(scenario, tmp_path):
    if scenario == "tm":
        pytest.importorskip("torchmetrics")
    ours = json.loads(json.dumps(scenarios.run(fulmen, scenario, str(tmp_path))))
    expected = LIGHTNING[scenario]
    assert [row[0] for row in ours] == [row[0] for row in expected]
    for got, want in zip(ours, expected):
        assert got == want, f"at {want[:-1]}"
