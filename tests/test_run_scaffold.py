"""lifting/run.py: the scaffold both training loops share (single process)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from poselift.lifting.config import LiftConfig
from poselift.lifting.distributed import DistContext
from poselift.lifting.run import (finish_run, resume_checkpoint, rng_extra, save_epoch, seed_everything,
                                  start_run)


def _ck_kw(extra: dict) -> dict:
    return dict(model_name="m", model_args={}, state_dict={"w": torch.ones(2)}, config={},
                cache_fingerprints={"gt": "abc"}, epoch=3, extra=extra)


def test_save_resume_restores_rng_and_refuses_other_caches(tmp_path):
    ctx = DistContext()
    out = tmp_path / "run"
    start_run(LiftConfig(epochs=3), out, ctx)
    assert "epochs: 3" in (out / "config.yaml").read_text()
    seed_everything(5)
    extra = rng_extra(ctx)
    expect = torch.rand(3)
    for epoch in (1, 2, 3, 4):
        save_epoch(out, epoch, _ck_kw(extra), every=2, is_best=epoch == 3)
    names = sorted(p.name for p in out.glob("*.pt"))
    assert names == ["best.pt", "epoch_2.pt", "epoch_4.pt", "last.pt"]
    torch.rand(10)  # move the generator on; resuming must put it back
    ck = resume_checkpoint(out / "last.pt", {"gt": "abc"}, ctx)
    assert ck["epoch"] == 3
    torch.testing.assert_close(torch.rand(3), expect)
    with pytest.raises(RuntimeError, match=r"last\.pt: was trained on other caches"):
        resume_checkpoint(out / "last.pt", {"gt": "other"}, ctx)
    assert finish_run(out, {"a": 1}, ctx) == {"a": 1}
    assert json.loads((out / "summary.json").read_text()) == {"a": 1}


def test_seed_everything_seeds_torch_and_numpy():
    seed_everything(2**32 + 7)  # numpy takes it modulo 2**32 (it refuses larger seeds)
    a, x = torch.rand(2), np.random.rand(2)
    seed_everything(2**32 + 7)
    torch.testing.assert_close(torch.rand(2), a)
    np.testing.assert_array_equal(np.random.rand(2), x)
    seed_everything(7)
    np.testing.assert_array_equal(np.random.rand(2), x)
