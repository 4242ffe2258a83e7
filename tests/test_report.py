"""Grouped reports, VideoPose3D protocol weighting, outputs and plots."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from poselift.evaluation import (SequenceRecord, evaluate_sequences, metrics, tcmr_summary,
                                 videopose3d_protocol)
from poselift.evaluation.plots import write_plots

J = 3


def _gt(t: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=0.3, size=(t, J, 3))


def _rec(seq_id: str, subject: str, action: str, t: int, offset_m: float,
         seed: int = 0, **kw) -> SequenceRecord:
    """Prediction = gt shifted by ``offset_m`` metres along x: MPJPE = offset in mm."""
    gt = _gt(t, seed)
    return SequenceRecord(seq_id=seq_id, subject=subject, action=action, fps=50.0,
                          pred=gt + np.array([offset_m, 0, 0]), gt=gt, **kw)


def _three() -> list[SequenceRecord]:
    return [_rec("a", "S9", "Walking 1", 4, 0.010, 1),
            _rec("b", "S11", "Walking 2", 2, 0.040, 2),
            _rec("c", "S9", "Eating 1", 3, 0.030, 3)]


def test_grouping_weights_by_hand() -> None:
    rep = evaluate_sequences(_three())
    d = rep.to_dict()
    assert d["overall"]["mpjpe"]["mean"] == pytest.approx(210 / 9)   # frame-weighted
    assert d["overall"]["mpjpe"]["count"] == 9
    assert d["by_action"]["Walking 1"]["mpjpe"]["mean"] == pytest.approx(10.0)
    assert d["by_subject"]["S9"]["mpjpe"]["mean"] == pytest.approx((40 + 90) / 7)
    assert d["by_subject"]["S11"]["mpjpe"]["mean"] == pytest.approx(40.0)
    assert d["overall"]["p_mpjpe"]["mean"] == pytest.approx(0.0, abs=1e-9)   # translation
    assert d["overall"]["mpjve"]["mean"] == pytest.approx(0.0, abs=1e-9)

    proto = videopose3d_protocol(rep)
    table = proto.tables["all"]
    assert list(table.rows) == ["Walking", "Eating"]
    assert table.rows["Walking"]["p1"] == pytest.approx((4 * 10 + 2 * 40) / 6)
    assert table.rows["Walking"]["frames"] == 6
    assert table.rows["Eating"]["p1"] == pytest.approx(30.0)
    assert table.average["p1"] == pytest.approx(25.0)        # unweighted over groups
    p3 = [metrics.n_mpjpe(r.pred, r.gt) * 1000 for r in _three()]
    assert table.rows["Walking"]["p3"] == pytest.approx(np.concatenate(p3[:2]).mean())
    md = proto.to_markdown()
    assert "| Walking | 6 | 20.0 | 0.0 |" in md
    assert "| Eating | 3 | 30.0 | 0.0 |" in md
    assert "| **Average** | | 25.0 | 0.0 |" in md

    by_s = videopose3d_protocol(rep, by_subject=True)
    assert by_s.tables["S9"].average["p1"] == pytest.approx(20.0)    # (10 + 30) / 2
    assert by_s.tables["S11"].rows["Walking"]["p1"] == pytest.approx(40.0)
    assert "### Subject S11 (mm)" in by_s.to_markdown()
    walk = videopose3d_protocol(rep, actions=["Walk"])
    assert list(walk.tables["all"].rows) == ["Walking"]
    assert walk.tables["all"].average["p1"] == pytest.approx(20.0)
    with pytest.raises(ValueError, match="no sequence matches"):
        videopose3d_protocol(rep, actions=["Sitting"])


def test_mpjve_weighted_by_frames_like_reference() -> None:
    a, b = np.zeros((3, J, 3)), np.zeros((5, J, 3))
    pa, pb = a.copy(), b.copy()
    pa[1:, :, 0] = 0.010          # velocity errors (mm): 10, 0      -> mean 5,  T=3
    pb[4, :, 0] = 0.040           # velocity errors (mm): 0, 0, 0, 40 -> mean 10, T=5
    rep = evaluate_sequences([
        SequenceRecord(seq_id="x", subject="S1", action="Jog 1 chunk0", pred=pa, gt=a),
        SequenceRecord(seq_id="y", subject="S1", action="Jog 1 chunk1", pred=pb, gt=b)])
    row = videopose3d_protocol(rep).tables["all"].rows["Jog"]
    assert row["mpjve"] == pytest.approx((3 * 5 + 5 * 10) / 8)
    # the report's own pooling is over velocity entries instead, and says so
    assert rep.overall()["mpjve"]["mean"] == pytest.approx(50 / 6)
    assert rep.overall()["mpjve"]["count"] == 6


def test_masks_counts_and_excluded_frames() -> None:
    mask = np.array([True, False, False, True, True, True])
    r = _rec("m", "S1", "Walk", 6, 0.010, 4, mask=mask)
    rep = evaluate_sequences([r, _rec("n", "S1", "Walk", 3, 0.0, 5)])
    d = rep.to_dict()
    assert d["frames"] == {"total": 9, "evaluated": 7, "excluded": 2}
    seq = d["by_sequence"]["m"]
    assert seq["excluded_frames"] == [[1, 3]]
    assert seq["excluded_accel_centres"] == [[1, 4]]     # only centre 4 has 3 visible frames
    assert seq["metrics"]["accel_error"]["count"] == 1
    assert seq["metrics"]["mpjpe"]["count"] == 4
    assert d["overall"]["mpjpe"]["mean"] == pytest.approx(40 / 7)
    md = rep.to_markdown()
    assert "- m: [[1, 3]]" in md and "2 excluded by masks" in md


def test_per_joint_with_joint_mask() -> None:
    gt = _gt(4, 6)
    pred = gt.copy()
    pred[:, 1, 2] += 0.020
    jm = np.ones((4, J), dtype=bool)
    jm[0, 1] = False
    names = ["pelvis", "knee", "ankle"]
    rep = evaluate_sequences([SequenceRecord(seq_id="p", subject="S1", action="A", pred=pred,
                                             gt=gt, mask=jm, joint_names=names)])
    pj = rep.per_joint()
    assert pj["names"] == names
    assert pj["count"] == [4, 3, 4]
    np.testing.assert_allclose(pj["mpjpe"], [0.0, 20.0, 0.0], atol=1e-9)
    # frame 0 averages joints 0 and 2 only (0 mm); frames 1-3 average 0, 20, 0
    assert rep.overall()["mpjpe"]["mean"] == pytest.approx((0 + 3 * 20 / 3) / 4)
    assert "| knee | 3 | 20.0 |" in rep.to_markdown()


def test_json_markdown_and_tcmr_summary(tmp_path: Path) -> None:
    gv = np.zeros((4, 5, 3))
    recs = _three()
    recs[0] = _rec("a", "S9", "Walking 1", 4, 0.010, 1, verts=gv + [0.005, 0, 0], gt_verts=gv)
    rep = evaluate_sequences(recs)
    path = rep.write_json(tmp_path / "out" / "report.json", include_frames=True)
    d = json.loads(path.read_text())
    assert d["units"] == {"pose": "mm", "mpjve": "mm/frame", "accel": "mm/frame^2"}
    assert d["by_action"]["Walking 2"]["mpjpe"]["mean"] == pytest.approx(40.0)
    assert d["by_sequence"]["a"]["metrics"]["pve"]["mean"] == pytest.approx(5.0)
    assert len(d["by_sequence"]["c"]["per_frame"]["accel_error"]) == 1
    assert "pve" not in d["by_sequence"]["b"]["metrics"]
    md = rep.write_markdown(tmp_path / "report.md").read_text()
    assert "| all | 9 | 23.3 |" in md and "| Walking 2 | 2 | 40.0 |" in md
    s = tcmr_summary(rep)
    assert s["mpjpe"] == pytest.approx(210 / 9) and s["pve"] == pytest.approx(5.0)
    assert set(s) == {"mpjpe", "pa_mpjpe", "pve", "accel_error", "accel"}


def test_plots_are_decodable_pngs(tmp_path: Path) -> None:
    recs = _three()
    recs[0].pred = recs[0].pred + np.random.default_rng(9).normal(scale=0.01, size=(4, J, 3))
    paths = write_plots(evaluate_sequences(recs), tmp_path / "plots", max_sequences=2)
    assert set(paths) == {"per_joint", "error_over_time", "accel_error"}
    for p in paths.values():
        img = cv2.imread(str(p))
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 100
        assert img.std() > 1.0                  # not a blank canvas


def test_record_errors_name_sequence_and_field() -> None:
    with pytest.raises(ValueError, match=r"sequence 'q': field 'pred' shape"):
        SequenceRecord(seq_id="q", subject="S", action="A", pred=np.zeros((2, 3, 3)),
                       gt=np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match=r"sequence 'q': field 'mask'"):
        SequenceRecord(seq_id="q", subject="S", action="A", pred=np.zeros((2, 3, 3)),
                       gt=np.zeros((2, 3, 3)), mask=np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="'verts' and 'gt_verts'"):
        SequenceRecord(seq_id="q", subject="S", action="A", pred=np.zeros((2, 3, 3)),
                       gt=np.zeros((2, 3, 3)), verts=np.zeros((2, 4, 3)))
    with pytest.raises(KeyError, match="unknown key 'preds'"):
        SequenceRecord.from_mapping({"seq_id": "q", "subject": "S", "action": "A",
                                     "preds": 1, "gt": 2})
    with pytest.raises(KeyError, match="missing key 'pred'"):
        SequenceRecord.from_mapping({"seq_id": "q", "subject": "S", "action": "A", "gt": 2})
    with pytest.raises(ValueError, match="duplicate seq_id 'a'"):
        evaluate_sequences([_rec("a", "S", "A", 3, 0.0), _rec("a", "S", "B", 3, 0.0)])
    r1 = _rec("u", "S", "A", 3, 0.0, joint_names=["x", "y", "z"])
    r2 = _rec("v", "S", "A", 3, 0.0, joint_names=["x", "y", "w"])
    with pytest.raises(ValueError, match="sequence 'v': field 'joint_names' differs"):
        evaluate_sequences([r1, r2])
    d = {"seq_id": "k", "subject": "S", "action": "A", "pred": np.zeros((2, J, 3)),
         "gt": np.zeros((2, J, 3))}
    assert evaluate_sequences([d]).overall()["mpjpe"]["mean"] == 0.0


def _npz(path: Path, recs: list[SequenceRecord], **extra) -> Path:
    np.savez(path, pred=np.concatenate([r.pred for r in recs]),
             gt=np.concatenate([r.gt for r in recs]),
             lengths=np.array([r.n_frames for r in recs]),
             seq_ids=np.array([r.seq_id for r in recs]),
             subjects=np.array([r.subject for r in recs]),
             actions=np.array([r.action for r in recs]), **extra)
    return path


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from poselift.evaluation.cli import load_records, main

    f = _npz(tmp_path / "preds.npz", _three(), fps=np.array([50.0, 50.0, 25.0]))
    assert main([str(f), "--out", str(tmp_path / "ev"), "--plots"]) == 0
    proto = json.loads((tmp_path / "ev" / "protocol.json").read_text())
    assert proto["tables"]["all"]["average"]["p1"] == pytest.approx(25.0)
    assert proto["tcmr"]["mpjpe"] == pytest.approx(210 / 9)
    assert "| **Average** | | 25.0 |" in capsys.readouterr().out
    assert (tmp_path / "ev" / "plots" / "per_joint.png").stat().st_size > 0
    assert json.loads((tmp_path / "ev" / "report.json").read_text())["by_sequence"]["c"]["fps"] == 25.0
    # centring on joint 0 removes the pure translation entirely
    recs = load_records(f, center=[0])
    assert evaluate_sequences(recs).overall()["mpjpe"]["mean"] == pytest.approx(0.0, abs=1e-9)


def test_cli_input_errors_name_file_and_key(tmp_path: Path) -> None:
    from poselift.evaluation.cli import load_records

    bad = tmp_path / "bad.npz"
    np.savez(bad, pred=np.zeros((2, J, 3)), gt=np.zeros((2, J, 3)))
    with pytest.raises(KeyError, match=r"bad\.npz: missing key 'lengths'"):
        load_records(bad)
    f = _npz(tmp_path / "x.npz", _three(), colour=np.zeros(3))
    with pytest.raises(KeyError, match=r"x\.npz: unknown key 'colour'"):
        load_records(f)
    f = _npz(tmp_path / "y.npz", _three(), mask=np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match=r"y\.npz: key 'mask' has 4 frames"):
        load_records(f)
    f = _npz(tmp_path / "z.npz", _three(), fps=np.array([{"a": 1}, 2, 3], dtype=object))
    with pytest.raises(ValueError, match=r"z\.npz: refusing to unpickle"):
        load_records(f)
