"""Weights by name: the zoo table, the downloader (loopback server only), the CLI and the docs."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from poselift.zoo import (UnknownWeightsError, WeightsError, cached_path, fetch, get_entry, load_table,
                          resolve_weights, weights_name)
from poselift.zoo import download as dl
from poselift.zoo import table as tbl
from poselift.zoo.cli import main as weights_main

sys.path.insert(0, str(Path(__file__).parent))
from zoo_server import ZooServer, extra_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def server():
    s = ZooServer()
    yield s
    s.close()


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("POSELIFT_HOME", str(tmp_path / "home"))
    for k in ("POSELIFT_OFFLINE", "POSELIFT_WEIGHTS_MIRROR", "POSELIFT_ZOO_EXTRA"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(dl, "BACKOFF_S", 0.0)
    tbl._load.cache_clear()
    return tmp_path / "home" / "weights"


def _payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed * 7 + i // 251) % 256 for i in range(n))


def _extra(tmp_path: Path, monkeypatch, entries) -> None:
    monkeypatch.setenv("POSELIFT_ZOO_EXTRA", str(extra_table(tmp_path / "extra.json", entries)))


# -- the table -------------------------------------------------------------------------------
def test_table_covers_the_published_checkpoints() -> None:
    t = load_table()
    for name in ["resnet50-imagenet-v1", "resnet50-imagenet-v2", "spin-hmr", "spin-j-regressor-extra",
                 "spin-j-regressor-h36m", "spin-smpl-mean-params", "vibe-wo-3dpw", "tcmr-demo",
                 "videopose3d-h36m-cpn", "videopose3d-h36m-detectron-coco", "videopose3d-humaneva15-detectron",
                 "alphapose-fastpose-coco17", "alphapose-fastpose-halpe26", "alphapose-fastpose-halpe136",
                 "hrnet-w32-coco-256x192", "hrnet-w48-coco-384x288", "smpl-neutral",
                 *[f"yolox-{s}" for s in ("nano", "tiny", "s", "m", "l", "x")]]:
        assert name in t, name
    files = [e.file for e in t.values()]
    assert len(files) == len(set(files)), "two entries would share one cache file"
    for e in t.values():
        assert e.manual or e.urls, e.name
        if e.sha256_prefix:  # torchvision: the prefix is the hash part of the file name
            assert e.file.rsplit("-", 1)[1].startswith(e.sha256_prefix), e.name
    assert t["smpl-neutral"].manual and "smpl" in t["smpl-neutral"].manual_instructions.lower()
    for name in ("videopose3d-h36m-cpn", "vibe-wo-3dpw", "alphapose-fastpose-coco17", "smpl-neutral"):
        assert t[name].noncommercial, name
    assert not t["yolox-s"].noncommercial and "Apache" in t["yolox-s"].licence


def test_unknown_name_suggests_the_closest(home: Path) -> None:
    with pytest.raises(UnknownWeightsError, match="did you mean videopose3d-h36m-cpn"):
        get_entry("videopose3d-h36m-cp")
    with pytest.raises(FileNotFoundError, match="no such file, and unknown weights name 'yolox_s'.*yolox-s"):
        resolve_weights("yolox_s")
    assert weights_main(["info", "resnet50-imagenet"]) == 1


def test_paths_pass_through_and_names_are_recognised(tmp_path: Path, home: Path) -> None:
    f = tmp_path / "mine.bin"
    f.write_bytes(b"x")
    assert resolve_weights(f) == f and resolve_weights("does/not/exist.pth") == Path("does/not/exist.pth")
    assert weights_name(f) is None and weights_name("spin-hmr") == "spin-hmr"


# -- downloads -------------------------------------------------------------------------------
def test_fetch_records_unknown_hash_and_reuses_cache(server, home, monkeypatch, capsys) -> None:
    data = _payload(50_000)
    server.files["pretrained_h36m_cpn.bin"] = data
    monkeypatch.setenv("POSELIFT_WEIGHTS_MIRROR", server.url)
    p = fetch("videopose3d-h36m-cpn", progress=True)
    assert p == home / "pretrained_h36m_cpn.bin" and p.read_bytes() == data
    sha = hashlib.sha256(data).hexdigest()
    assert (home / "pretrained_h36m_cpn.bin.sha256").read_text().split()[0] == sha
    err = capsys.readouterr().err
    assert sha in err and "CC BY-NC" in err  # hash printed, non-commercial licence shown
    assert not list(home.glob("*.part"))
    assert fetch("videopose3d-h36m-cpn") == p and len(server.gets("pretrained_h36m_cpn.bin")) == 1
    p.unlink()  # removed by hand; upstream has changed meanwhile: the new hash is kept, with a warning
    server.files["pretrained_h36m_cpn.bin"] = data[::-1]
    assert fetch("videopose3d-h36m-cpn", progress=False).read_bytes() == data[::-1]
    assert f"an earlier download had {sha}" in capsys.readouterr().err


def test_known_hash_mismatch_removes_file_and_next_run_redownloads(server, home, tmp_path, monkeypatch) -> None:
    good = _payload(20_000, 1)
    _extra(tmp_path, monkeypatch, [{"name": "t-known", "file": "known.pth",
                                    "sha256": hashlib.sha256(good).hexdigest()}])
    monkeypatch.setenv("POSELIFT_WEIGHTS_MIRROR", server.url)
    server.files["known.pth"] = good[:-1] + b"\x00"  # corrupted upstream / in transit
    with pytest.raises(WeightsError, match=r"has sha256 .* expected .*the file was removed") as ei:
        fetch("t-known")
    assert "\n" not in str(ei.value) and not (home / "known.pth").exists()
    server.files["known.pth"] = good
    assert fetch("t-known").read_bytes() == good


def test_torchvision_prefix_is_checked(server, home, monkeypatch) -> None:
    server.files["resnet50-0676ba61.pth"] = b"not the real weights"
    monkeypatch.setenv("POSELIFT_WEIGHTS_MIRROR", server.url)
    with pytest.raises(WeightsError, match="expected a hash starting 0676ba61"):
        fetch("resnet50-imagenet-v1", progress=False)
    assert not cached_path(get_entry("resnet50-imagenet-v1")).exists()


def test_resume_after_the_server_cuts_the_connection(server, home, monkeypatch) -> None:
    data = _payload(64_000, 2)
    server.files["pretrained_humaneva15_detectron.bin"] = data
    server.cut.add("pretrained_humaneva15_detectron.bin")
    monkeypatch.setenv("POSELIFT_WEIGHTS_MIRROR", server.url)
    p = fetch("videopose3d-humaneva15-detectron", progress=False)
    assert p.read_bytes() == data
    gets = server.gets("pretrained_humaneva15_detectron.bin")
    assert [g["range"] for g in gets] == [None, f"bytes={len(data) // 2}-"]


def test_resume_from_a_server_that_ignores_range(server, home, monkeypatch) -> None:
    data = _payload(64_000, 6)
    server.files["yolox_m.pth"] = data
    server.cut.add("yolox_m.pth")
    server.ignore_range = True
    monkeypatch.setenv("POSELIFT_WEIGHTS_MIRROR", server.url)
    assert fetch("yolox-m", progress=False).read_bytes() == data  # not the half file twice
    assert len(server.gets("yolox_m.pth")) == 2


def test_offline_and_network_errors_are_one_line_with_url_and_path(home, monkeypatch) -> None:
    dest = home / "pretrained_h36m_cpn.bin"
    monkeypatch.setenv("POSELIFT_OFFLINE", "1")
    with pytest.raises(WeightsError) as ei:
        fetch("videopose3d-h36m-cpn")
    msg = str(ei.value)
    assert "\n" not in msg and "POSELIFT_OFFLINE=1" in msg and str(dest) in msg
    assert "https://dl.fbaipublicfiles.com/video-pose-3d/pretrained_h36m_cpn.bin" in msg
    monkeypatch.delenv("POSELIFT_OFFLINE")
    monkeypatch.setenv("POSELIFT_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(WeightsError) as ei:
        fetch("videopose3d-h36m-cpn", progress=False)
    msg = str(ei.value)
    assert "\n" not in msg and "could not download pretrained_h36m_cpn.bin" in msg and str(dest) in msg


def test_a_web_page_is_not_taken_for_the_file(server, home, monkeypatch) -> None:
    monkeypatch.setenv("POSELIFT_WEIGHTS_MIRROR", server.url + "/uc?x=")  # serves an HTML page
    with pytest.raises(WeightsError, match="web page instead of the file"):
        fetch("yolox-l", progress=False)
    assert not (home / "yolox_l.pth").exists() and not (home / "yolox_l.pth.part").exists()
    assert len(server.log) == 1  # not retried


def test_manual_entry_says_where_to_put_it(home) -> None:
    with pytest.raises(WeightsError, match="manual download.*smplify.*" + str(home / "SMPL_NEUTRAL.pkl")):
        fetch("smpl-neutral")


def test_unwritable_cache_folder(tmp_path, monkeypatch, server) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("POSELIFT_HOME", str(blocker / "home"))  # below a file: cannot be created
    monkeypatch.setenv("POSELIFT_WEIGHTS_MIRROR", server.url)
    with pytest.raises(WeightsError, match="cannot be created.*POSELIFT_HOME"):
        fetch("yolox-nano")
    ro = tmp_path / "ro"
    (ro / "weights").mkdir(parents=True)
    os.chmod(ro / "weights", 0o555)
    monkeypatch.setenv("POSELIFT_HOME", str(ro))
    try:
        if os.access(ro / "weights", os.W_OK):
            pytest.skip("running as root: permission bits do not make a folder read-only")
        with pytest.raises(WeightsError, match="is read-only"):
            fetch("yolox-nano")
    finally:
        os.chmod(ro / "weights", 0o755)


def test_google_drive_confirmation_flow(server, home, tmp_path, monkeypatch) -> None:
    data = _payload(30_000, 3)
    server.drive["FILEID"] = data
    monkeypatch.setattr(dl, "GDRIVE_URL", server.url + "/uc?export=download")
    _extra(tmp_path, monkeypatch, [{"name": "t-drive", "file": "drive.pth", "urls": ["gdrive:FILEID"]}])
    assert fetch("t-drive", progress=False).read_bytes() == data
    assert [r["path"].split("?")[0] for r in server.log] == ["/uc", "/download"]


def test_archive_member_is_extracted(server, home, tmp_path, monkeypatch) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("bundle/a.npy", b"AAA")
        zf.writestr("bundle/b.pth", b"BBBB")
    server.files["bundle.zip"] = buf.getvalue()
    monkeypatch.setenv("POSELIFT_WEIGHTS_MIRROR", server.url)
    _extra(tmp_path, monkeypatch, [
        {"name": "t-a", "file": "a.npy", "archive": {"file": "bundle.zip", "member": "a.npy"}},
        {"name": "t-b", "file": "b.pth", "archive": {"file": "bundle.zip", "member": "b.pth"}},
        {"name": "t-c", "file": "c.pth", "archive": {"file": "bundle.zip", "member": "c.pth"}}])
    assert fetch("t-a").read_bytes() == b"AAA"
    monkeypatch.setenv("POSELIFT_OFFLINE", "1")  # the cached archive serves the other member offline
    assert fetch("t-b").read_bytes() == b"BBBB"
    assert len(server.gets("bundle.zip")) == 1  # the archive is downloaded once
    with pytest.raises(WeightsError, match="no member named c.pth"):
        fetch("t-c")


def test_truncated_tar_archive_is_removed_and_fetched_again(server, home, monkeypatch) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, payload in [("data/J_regressor_extra.npy", _payload(3000, 7)),
                              ("data/smpl_mean_params.npz", _payload(2000, 8))]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    whole = buf.getvalue()
    server.files["spin_data.tar.gz"] = whole[: len(whole) // 2]  # a truncated upload
    monkeypatch.setenv("POSELIFT_WEIGHTS_MIRROR", server.url)
    with pytest.raises(WeightsError, match="unreadable archive.*removed, run again"):
        fetch("spin-j-regressor-extra", progress=False)
    assert not (home / "archives" / "spin_data.tar.gz").exists()
    server.files["spin_data.tar.gz"] = whole
    assert fetch("spin-j-regressor-extra", progress=False).read_bytes() == _payload(3000, 7)
    assert fetch("spin-smpl-mean-params", progress=False).read_bytes() == _payload(2000, 8)


def test_two_processes_fetch_once(server, home, tmp_path) -> None:
    """Both processes block on the lock (held here first); one downloads, the other then finds the file."""
    data = _payload(40_000, 4)
    server.files["yolox_tiny.pth"] = data
    server.delay = 0.01
    env = {**os.environ, "POSELIFT_HOME": str(home.parent), "POSELIFT_WEIGHTS_MIRROR": server.url,
           "PYTHONSAFEPATH": "1"}
    code = "import sys; from poselift.zoo.cli import main; sys.exit(main(['fetch', 'yolox-tiny', '--no-progress']))"
    home.mkdir(parents=True)
    with dl._locked(home, "yolox_tiny.pth"):
        procs = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for p in procs:  # each says so right before it blocks on the lock
            assert "waiting for another process" in p.stderr.readline()
        assert server.gets("yolox_tiny.pth") == []
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert {o[0].strip() for o in outs} == {str(home / "yolox_tiny.pth")}
    assert (home / "yolox_tiny.pth").read_bytes() == data
    assert len(server.gets("yolox_tiny.pth")) == 1


# -- CLI and docs ------------------------------------------------------------------------------
def test_cli_list_path_verify(server, home, monkeypatch, capsys) -> None:
    server.files["yolox_nano.pth"] = _payload(10_000, 5)
    monkeypatch.setenv("POSELIFT_WEIGHTS_MIRROR", server.url)
    assert weights_main(["fetch", "yolox-nano", "--no-progress"]) == 0
    assert weights_main(["list"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("yolox-nano "))
    assert "cached" in line and "Apache-2.0" in line
    assert "manual" in next(ln for ln in out.splitlines() if ln.startswith("smpl-neutral "))
    assert weights_main(["path", "tcmr-demo"]) == 0
    assert capsys.readouterr().out.strip() == str(home / "tcmr_demo_model.pth.tar")
    assert weights_main(["verify"]) == 0 and "ok" in capsys.readouterr().out
    with open(home / "yolox_nano.pth", "r+b") as fh:  # flip one byte
        fh.seek(100)
        fh.write(b"\xff" if fh.read(1) != b"\xff" else b"\x00")
    assert weights_main(["verify"]) == 1 and "CORRUPT" in capsys.readouterr().out
    assert weights_main(["info", "videopose3d-h36m-cpn"]) == 0
    assert "CC BY-NC" in capsys.readouterr().out


def test_umbrella_command_routes_to_weights(capsys) -> None:
    from poselift.cli import main

    assert main(["weights", "path", "yolox-s"]) == 0
    assert capsys.readouterr().out.strip().endswith("yolox_s.pth")


def test_docs_are_in_sync_with_the_table(monkeypatch) -> None:
    from poselift.zoo.docs import render_markdown

    monkeypatch.delenv("POSELIFT_ZOO_EXTRA", raising=False)
    tbl._load.cache_clear()
    assert (ROOT / "docs" / "weights.md").read_text() == render_markdown(), \
        "docs/weights.md is stale: run `poselift weights docs --write docs/weights.md`"
