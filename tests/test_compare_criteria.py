"""benchmarks/compare_criteria.py: the statistics its README sentence rests on, and its recipe pairs."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import compare_criteria  # noqa: E402


def test_difference_and_its_standard_error():
    results = {"obert@0.9": [0.90, 0.92, 0.94], "magnitude@0.9": [0.80, 0.81, 0.82],
               "obert@0.97": [0.70, 0.80, 0.90], "magnitude@0.97": [0.75, 0.80, 0.85]}
    diff = compare_criteria.differences(results, [0.9, 0.97])
    se = math.hypot(0.02 / math.sqrt(3), 0.01 / math.sqrt(3))
    assert diff["0.9"]["obert_minus_magnitude"] == pytest.approx(0.11)
    assert diff["0.9"]["se"] == pytest.approx(se)
    assert diff["0.9"]["beyond_noise"] is True
    assert diff["0.97"]["obert_minus_magnitude"] == pytest.approx(0.0, abs=1e-12)
    assert diff["0.97"]["beyond_noise"] is False


def test_single_seed_gives_no_difference():
    assert compare_criteria.differences({"obert@0.9": [0.9], "magnitude@0.9": [0.8]}, [0.9]) == {}


@pytest.mark.parametrize("task", sorted(compare_criteria.RECIPES))
def test_recipe_pairs_differ_only_in_the_criterion(task):
    magnitude, obert = (yaml.safe_load(compare_criteria.RECIPES[task][k].read_text()) for k in ("magnitude", "obert"))
    for recipe in (magnitude, obert):
        recipe.pop("name"), recipe.pop("description")
        recipe["pruning"].pop("criterion", None), recipe["pruning"].pop("obert", None)
    assert magnitude == obert
