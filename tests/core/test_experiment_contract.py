"""The one shape of an experiment: measure per chunk; derive once; pure checks and metrics; plot draws."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.core.sample_experiment import Walk


def _tables(exp: Walk) -> dict[str, pd.DataFrame]:
    cfg = exp.config("quick")
    parts = [exp.measure(cfg, c) for c in exp.chunks(cfg)]
    return {name: pd.concat([p[name] for p in parts], ignore_index=True) for name in ("results", "paths")}


def test_evaluate_is_pure_and_draws_only_when_asked(tmp_path: Path) -> None:
    exp = Walk()
    cfg, tables = exp.config("quick"), _tables(Walk())
    before = {k: v.copy() for k, v in tables.items()}
    metrics, checks = exp.evaluate(cfg, tables)  # no out: verdicts without figures
    assert list(tables) == ["results", "paths"]  # derived tables are not added to the caller's dict
    for name, df in before.items():
        pd.testing.assert_frame_equal(tables[name], df)
    assert [c.key for c in checks] == ["var-final"] and set(metrics) == {"var_final"}
    assert exp.evaluate(cfg, tables, tmp_path) == (metrics, checks)  # same verdicts with the figures
    assert [p.name for p in tmp_path.iterdir()] == ["finals.png"]


def test_a_derived_table_may_not_shadow_a_measured_one() -> None:
    class Shadow(Walk):
        def derive(self, config, tables):  # type: ignore[no-untyped-def]
            return {"results": tables["results"].head(1)}

    exp = Shadow()
    with pytest.raises(RuntimeError, match="shadow measured tables"):
        exp.evaluate(exp.config("quick"), _tables(exp))
