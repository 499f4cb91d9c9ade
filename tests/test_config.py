"""Configs round-trip through JSON, and loading refuses anything but the dataclasses' keys."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ldseg.config import RunConfig, from_dict, load_run_config, save_run_config, to_dict
from ldseg.errors import LdsegError


def test_round_trip(tmp_path):
    cfg = RunConfig()
    cfg.preprocess.grid = (128, 96)
    cfg.train.val_cases = ("a", "b")
    save_run_config(cfg, tmp_path / "config.json")
    back = load_run_config(tmp_path / "config.json")
    assert back == cfg
    assert isinstance(back.preprocess.grid, tuple)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["model"].update(evil="__import__('os')"), "unknown keys"),
    (lambda d: d["train"].pop("lr"), "missing keys"),
    (lambda d: d["model"].update(num_classes="3"), "expected int"),
    (lambda d: d["preprocess"].update(grid=5), "expected a list"),
    (lambda d: d["diffusion"].update(schedule="sigmoid"), "unknown noise schedule"),
    (lambda d: d["model"].update(norm="layer"), "norm must be"),
    (lambda d: d["diffusion"].update(timestep_sampling="early"), "timestep_sampling must be"),
    (lambda d: d["preprocess"].update(pad_value="max"), "pad_value must be"),
])
def test_invalid_configs_are_clear_errors(tmp_path, mutate, message):
    data = to_dict(RunConfig())
    mutate(data)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LdsegError, match=message):
        load_run_config(path)


def test_a_config_from_before_the_added_keys_loads_with_what_it_meant(tmp_path):
    data = to_dict(RunConfig())
    for section in ("model", "train", "diffusion", "preprocess"):
        for key in type(getattr(RunConfig(), section)).ADDED_KEYS:
            data[section].pop(key)
    assert "timestep_sampling" not in data["diffusion"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    loaded = load_run_config(path)
    # a run from before the key trained with uniform timesteps and padded with the darkest
    # voxel, and resumes and predicts so; new runs: late timesteps, the border's mean
    assert loaded.diffusion.timestep_sampling == "uniform"
    assert RunConfig().diffusion.timestep_sampling == "late"
    assert (loaded.preprocess.pad_value, RunConfig().preprocess.pad_value) == ("min", "border")
    assert loaded == dataclasses.replace(
        RunConfig(), diffusion=dataclasses.replace(RunConfig().diffusion,
                                                   timestep_sampling="uniform"),
        preprocess=dataclasses.replace(RunConfig().preprocess, pad_value="min"))


def test_malformed_json_and_missing_file(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(LdsegError, match="invalid JSON"):
        load_run_config(tmp_path / "bad.json")
    with pytest.raises(LdsegError, match="not found"):
        load_run_config(tmp_path / "none.json")
    with pytest.raises(LdsegError, match="expected an object"):
        from_dict(RunConfig, [1, 2])
