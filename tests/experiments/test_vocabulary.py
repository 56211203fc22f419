"""Issue 17.5: one vocabulary for the config fields users type in ``--set``. A field name (split at ``_``) may
not use a synonym of a committed name; a renamed field keeps its old name only as an alias."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from noiseprobe import experiments

#: synonym -> the committed name (batch size, learning rate)
SYNONYMS = {
    "S": "batch_size",
    "bs": "batch_size",
    "batchsize": "batch_size",
    "minibatch": "batch_size",
    "eta": "lr",
    "learning": "lr",
    "stepsize": "lr",
}


#: names that are synonyms only as a whole field name (``B`` also labels panel B: sl-fig3's ``t_end_B``)
WHOLE = {"B": "batch_size", "N": "n_train"}


def _tokens(name: str) -> list[str]:
    """``S2d`` -> [S, 2d]; ``reg_S`` -> [reg, S]; ``batch_size_hd`` -> [batch, size, hd]."""
    return [t for part in name.split("_") for t in re.findall(r"[A-Za-z]+|\d+[A-Za-z]*", part)]


def _typed():
    for exp_id in experiments.REGISTRY:
        exp = experiments.get(exp_id)
        if exp.Config is not None:
            yield exp_id, exp.Config


def test_tokens_find_the_old_batch_size_names():
    assert all("S" in _tokens(n) for n in ("S", "S2d", "S_hd", "reg_S"))
    assert not any(
        t in SYNONYMS for n in ("batch_size", "batch_sizes_2d", "reg_batch_size", "lr_hd") for t in _tokens(n)
    )


@pytest.mark.parametrize("exp_id,config", list(_typed()), ids=[i for i, _ in _typed()])
def test_config_fields_use_the_committed_names(exp_id, config):
    bad = {f.name: SYNONYMS[t] for f in fields(config) for t in _tokens(f.name) if t in SYNONYMS}
    bad |= {f.name: WHOLE[f.name] for f in fields(config) if f.name in WHOLE}
    assert not bad, f"{exp_id}: fields named with a synonym (use the committed name): {bad}"
    for old, new in config.aliases.items():
        assert new in {f.name for f in fields(config)}, f"{exp_id}: alias {old} -> {new}, not a field"
        assert old not in {f.name for f in fields(config)}, f"{exp_id}: alias {old} is still a field"


def test_every_experiment_is_typed():
    """A config without a class has no field list to check (and ``config["x"]`` access): every registered
    experiment declares its Config."""
    untyped = [i for i in experiments.REGISTRY if experiments.get(i).Config is None]
    assert not untyped, untyped
