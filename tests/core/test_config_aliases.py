"""Renamed config fields: the old name keeps working in ``--set`` (one deprecation line), in stored
run.json files, and in the config hash; run.json files written before the one-shape refactor load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from noiseprobe.core.errors import ConfigError
from noiseprobe.core.runner import get_experiment, run_experiment
from noiseprobe.core.store import config_hash

WALK = "tests.core.sample_experiment:Walk"
OLD_RUNS = sorted((Path(__file__).parent / "old_runs").glob("*.json"))


def test_old_name_in_set_warns_once_and_gives_the_same_run(tmp_path: Path) -> None:
    lines: list[str] = []
    new = run_experiment(WALK, out=tmp_path / "a", overrides={"n_replicas": 8})
    old = run_experiment(WALK, out=tmp_path / "a", overrides={"walks": 8}, warn=lines.append)
    assert old == new  # the same run directory accepts the old spelling: same hash, finished summary
    stored = json.loads((tmp_path / "a" / "run.json").read_text())
    assert "walks" in stored["config"] and "n_replicas" not in stored["config"]
    assert new["config"]["n_replicas"] == 8 and "walks" not in new["config"]
    assert stored["hash"] == config_hash(WALK, stored["config"])


def test_old_name_warning_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = get_experiment(WALK).config("quick", {"walks": 8})
    assert cfg.n_replicas == 8
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["noiseprobe: warning: config field walks is deprecated; it is now n_replicas (--set n_replicas=...)"]


def test_old_and_new_name_together_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="walks"):
        get_experiment(WALK).config("quick", {"walks": 8, "n_replicas": 8})


def test_stored_config_with_the_old_name_loads_silently(capsys: pytest.CaptureFixture[str]) -> None:
    exp = get_experiment(WALK)
    stored = exp.config("quick").stored()
    assert "walks" in stored
    assert exp.parse(stored).n_replicas == stored["walks"]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("path", OLD_RUNS, ids=[p.stem for p in OLD_RUNS])
def test_run_json_from_before_the_refactor_loads_and_keeps_its_hash(path: Path) -> None:
    """run.json files written at 619ec39 (quick presets): they parse, and the parsed config's stored
    form hashes to the stored hash (so a resumed run finds its directory)."""
    old = json.loads(path.read_text())
    cfg = get_experiment(old["experiment"]).parse(old["config"])
    assert config_hash(old["experiment"], cfg.stored()) == old["hash"]
