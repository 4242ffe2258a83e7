"""Data-parallel training: rank shards, synchronised BatchNorm, and torchrun runs of TCMR and the
VideoPose3D lifter that equal single-process training with the same global batch (dropout off,
so the comparison is exact up to float summation order), with rank 0 writing the only
checkpoints and a resumed DDP run reproducing the uninterrupted single-process one."""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from poselift.datasets.importers.videopose3d import import_videopose3d
from poselift.lifting.checkpoint import load_checkpoint
from poselift.lifting.config import LiftConfig
from poselift.lifting.distributed import (DistContext, DistributedBatchNorm, SyncTemporalModelOptimized1f,
                                          convert_sync_batchnorm, init_distributed, rank_part)
from poselift.synthetic.smpl import make_synthetic_smpl
from poselift.synthetic.tcmr import make_tiny_tcmr_caches
from poselift.lifting.videopose3d.model import TemporalModelOptimized1f
from poselift.lifting.videopose3d.train import train_lifter
from poselift.lifting.tcmr.train import TCMRConfig, train_tcmr

_spec = importlib.util.spec_from_file_location("vp3d_synth", Path(__file__).with_name("vp3d_synth.py"))
synth = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synth)

TORCHRUN = Path(sys.executable).with_name("torchrun")
F = 16

WORKER = '''
import atexit, json, os, sys
from pathlib import Path
import torch
from poselift.lifting import run
from poselift.lifting.tcmr import train as tt
from poselift.lifting.videopose3d import train as tl
from poselift.lifting.config import LiftConfig
from poselift.lifting.tcmr.train import TCMRConfig

rank = int(os.environ["RANK"])
def threads():
    return len(os.listdir("/proc/self/task"))
base = threads()
# registered before the group exists, so it runs after poselift's teardown (atexit is LIFO)
atexit.register(lambda: (Path(sys.argv[2]) / f"threads-rank{rank}.json").write_text(
    json.dumps({"base": base, "exit": threads()})))
log = Path(sys.argv[2]) / f"saves-rank{rank}.txt"
def recording(save):
    def f(path, **kw):
        with open(log, "a") as fh:
            fh.write(str(path) + "\\n")
        return save(path, **kw)
    return f
run.save_checkpoint = recording(run.save_checkpoint)  # both loops save through lifting/run.py
job = json.loads(Path(sys.argv[1]).read_text())
tt.train_tcmr(TCMRConfig(**job["tcmr"]))
tl.train_lifter(LiftConfig(**job["lifter"]))
'''


def _tcmr_cfg(caches: Path, body: Path, out: Path, epochs: int) -> dict:
    return dict(cache_dir=str(caches), train_2d=["insta_train"], train_3d=["3dpw_train"],
                val="3dpw_val", test=["3dpw_test"], body_model_dir=str(body), n_layers=1,
                hidden_size=16, feat_dim=F, regressor_hidden=16, regressor_dropout=0.0,
                batch_size=8, ratio_2d=0.5, iters_per_epoch=3, epochs=epochs, lr=1e-3,
                progress=False, device="cpu", out_dir=str(out), num_threads=1)


def _lift_cfg(gt: Path, kp: Path, out: Path, epochs: int) -> dict:
    return dict(gt_cache=str(gt), keypoints_cache=str(kp), train_subjects=["S1"], test_subjects=[],
                architecture=[3, 3], channels=16, dropout=0.0, epochs=epochs, batch_size=32,
                lr=1e-2, eval_every=0, checkpoint_every=0, out_dir=str(out), progress=False,
                seed=7, device="cpu", num_threads=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("ddp")
    p3, p2 = synth.h36m_files(d, {"S1": {"Walking 1": 40, "Eating": 28}})
    rep = import_videopose3d(p3, [p2], "h36m", d / "caches")
    return {"dir": d, "tcmr": make_tiny_tcmr_caches(d / "tcmr", feat_dim=F),
            "body": make_synthetic_smpl(d / "smpl"), "gt": rep.gt_path, "kp": rep.keypoint_paths["gt"]}


def test_rank_part_equal_disjoint_contiguous():
    idx = np.arange(100, 132)
    parts = [rank_part(idx, DistContext(rank=r, world_size=4)) for r in range(4)]
    assert [len(p) for p in parts] == [8] * 4
    np.testing.assert_array_equal(np.concatenate(parts), idx)
    assert rank_part(idx, DistContext()) is idx
    assert [len(rank_part(np.arange(19), DistContext(rank=r, world_size=2))) for r in (0, 1)] == [10, 9]


def test_init_without_launcher_is_single_process_and_names_missing_rendezvous():
    ctx = init_distributed(torch.device("cpu"), env={})
    assert not ctx.enabled and ctx.is_main
    with pytest.raises(RuntimeError, match="rank 1 of 2: MASTER_ADDR and MASTER_PORT"):
        init_distributed(torch.device("cpu"), env={"RANK": "1", "WORLD_SIZE": "2"})


def test_sync_bn_conversion_keeps_state_and_single_process_semantics():
    torch.manual_seed(0)
    base = TemporalModelOptimized1f(17, 2, 17, [3, 3], channels=8, dropout=0.0)
    twin = SyncTemporalModelOptimized1f(**base.constructor_args())
    twin.load_state_dict(base.state_dict())
    convert_sync_batchnorm(twin)
    assert all(type(m) is DistributedBatchNorm for m in [twin.expand_bn, *twin.layers_bn])
    assert list(twin.state_dict()) == list(base.state_dict())
    x = torch.randn(6, 9, 17, 2)
    base.train(), twin.train()
    torch.testing.assert_close(twin(x), base(x))  # without a group it is plain BatchNorm
    torch.testing.assert_close(twin.expand_bn.running_var, base.expand_bn.running_var)


TEARDOWN = '''
import datetime, gc, json, os, sys
import torch, torch.distributed as dist
from torch import nn
from poselift.lifting.distributed import init_group, teardown_group

def threads():
    return len(os.listdir("/proc/self/task"))

mode = sys.argv[1]
gc.disable()  # the dead cycle below must survive until teardown, as it may in a real run
torch.set_num_threads(1)
model = nn.Linear(4, 2)
model(torch.randn(3, 4)).sum().backward()
base = threads()
if mode == "torch-init":  # bypasses init_group: DDP's lazy import then pins the live group
    dist.init_process_group("gloo", rank=0, world_size=1)
else:
    init_group("gloo", 0, 1, datetime.timedelta(minutes=1))
from torch.nn.parallel import DistributedDataParallel
ddp = DistributedDataParallel(model)
ddp(torch.randn(3, 4)).sum().backward()
out = [torch.zeros(2)]
dist.all_gather(out, torch.ones(2))  # Python-owned tensors in a collective, then a barrier
dist.barrier()
live = threads()
cycle = [ddp]
cycle.append(cycle)  # training loops can leave their DDP model in a dead reference cycle
del ddp, cycle, out, model
dist.destroy_process_group() if mode == "destroy" else teardown_group()
print(json.dumps({"base": base, "live": live, "after": threads(), "init": dist.is_initialized()}))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through /proc")
def test_teardown_joins_gloo_threads_while_python_is_alive(tmp_path):
    """A run that finished must not abort at exit: a gloo worker thread still holding a collective
    with Python-owned tensors at interpreter finalization ends the process with SIGABRT (seen in
    CI: ~1 % of torchrun launches). After ``teardown_group`` (run atexit) no gloo thread is left;
    after a plain ``destroy_process_group``, or with a group created before DDP's lazy import of
    ``torch.distributed.nn`` (whose default arguments then pin it), they are: the two hazards the
    teardown removes, which is what this test tells apart."""
    script = tmp_path / "teardown.py"
    script.write_text(TEARDOWN)
    got = {}
    for mode in ("teardown", "destroy", "torch-init"):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONSAFEPATH": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(_free_port())}
        r = subprocess.run([sys.executable, str(script), mode], env=env, capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        got[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    assert all(g["live"] > g["base"] and not g["init"] for g in got.values()), got  # gloo had threads
    assert got["teardown"]["after"] == got["teardown"]["base"], got  # every one of them joined
    assert got["destroy"]["after"] > got["destroy"]["base"], got
    assert got["torch-init"]["after"] > got["torch-init"]["base"], got


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def test_torchrun_ddp_equals_single_process_rank0_writes_resume(data, tmp_path):
    single_t, single_l = tmp_path / "single_tcmr", tmp_path / "single_lift"
    train_tcmr(TCMRConfig(**_tcmr_cfg(data["tcmr"], data["body"], single_t, 2)))
    train_lifter(LiftConfig(**_lift_cfg(data["gt"], data["kp"], single_l, 2)))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ddp_t, ddp_l = tmp_path / "ddp_tcmr", tmp_path / "ddp_lift"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONSAFEPATH="1", PYTHONWARNINGS="ignore")
    for epochs in (1, 2):  # the second launch resumes from last.pt written by the first
        job = tmp_path / f"job{epochs}.json"
        job.write_text(json.dumps({"tcmr": _tcmr_cfg(data["tcmr"], data["body"], ddp_t, epochs),
                                   "lifter": _lift_cfg(data["gt"], data["kp"], ddp_l, epochs)}))
        r = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(script), str(job),
                            str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resumed from" in r.stdout
    # no gloo thread is left for interpreter finalization (the SIGABRT-at-exit hazard)
    for rank in (0, 1):
        t = json.loads((tmp_path / f"threads-rank{rank}.json").read_text())
        assert t["exit"] == t["base"], (rank, t)
    # rank 0 wrote every checkpoint; rank 1 none
    assert not (tmp_path / "saves-rank1.txt").exists()
    saves = (tmp_path / "saves-rank0.txt").read_text().split()
    assert sum(s.endswith("last.pt") for s in saves) == 4
    for single, ddp in ((single_t, ddp_t), (single_l, ddp_l)):
        a, b = _state(single / "last.pt"), _state(ddp / "last.pt")
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=2e-5, msg=f"{ddp.name}: {k}")
    hs = load_checkpoint(single_t / "last.pt")["extra"]["history"]
    hd = load_checkpoint(ddp_t / "last.pt")["extra"]["history"]
    assert [h["world_size"] for h in hd] == [2, 2]
    np.testing.assert_allclose([h["loss"] for h in hd], [h["loss"] for h in hs], rtol=1e-4)
    np.testing.assert_allclose([h["val_pa_mpjpe_mm"] for h in hd], [h["val_pa_mpjpe_mm"] for h in hs],
                               rtol=1e-4)
    lhs = json.loads((single_l / "summary.json").read_text())["history"]
    lhd = json.loads((ddp_l / "summary.json").read_text())["history"]
    np.testing.assert_allclose([h["train_mpjpe_mm"] for h in lhd], [h["train_mpjpe_mm"] for h in lhs],
                               rtol=1e-4)
    assert load_checkpoint(ddp_l / "last.pt")["extra"]["world_size"] == 2
