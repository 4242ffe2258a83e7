"""Fetch zoo entries into the cache: resume, hash check, atomic rename, one downloader per machine.

Under torchrun every rank may call :func:`fetch`; an ``fcntl`` lock on a file beside the
cache entry lets one process download while the others wait and then find the file there.
Network failures and ``POSELIFT_OFFLINE=1`` end in one line naming the file, the URL and
the exact path to place the file at by hand.
"""
from __future__ import annotations

import fcntl
import hashlib
import http.client
import http.cookiejar
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from .table import UNKNOWN, UnknownWeightsError, ZooEntry, cached_path, get_entry, is_zoo_name, weights_dir

__all__ = ["WeightsError", "fetch", "resolve_weights", "weights_name", "file_sha256",
           "recorded_sha256", "GDRIVE_URL"]

GDRIVE_URL = "https://drive.google.com/uc?export=download"
CHUNK = 1 << 16
ATTEMPTS = 3
TIMEOUT_S = 60.0
BACKOFF_S = 1.0  # wait BACKOFF_S, 2*BACKOFF_S between attempts (transient network trouble)


class WeightsError(RuntimeError):
    """Weights that cannot be provided; the message is one line and says what to do."""


class _Interrupted(Exception):
    pass


class _NotAFile(Exception):
    """The host answered with a web page (expired link, login or consent page): not retried."""


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def recorded_sha256(dest: Path) -> str | None:
    """The hash recorded at first download for entries whose project publishes none."""
    p = _sidecar(dest)
    return p.read_text().split()[0] if p.is_file() and p.read_text().strip() else None


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _offline() -> bool:
    return os.environ.get("POSELIFT_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def _by_hand(entry: ZooEntry, dest: Path) -> str:
    return f"download {entry.display_url()} and place the file at {dest}"


def _writable_dir(entry: ZooEntry, folder: Path, dest: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"weights cache folder {folder} cannot be created ({e.strerror}); set "
                           f"POSELIFT_HOME to a writable folder, or {_by_hand(entry, dest)}") from None
    if not os.access(folder, os.W_OK):
        raise WeightsError(f"weights cache folder {folder} is read-only; set POSELIFT_HOME to a "
                           f"writable folder, or {_by_hand(entry, dest)}")


@contextmanager
def _locked(folder: Path, key: str) -> Iterator[None]:
    """Hold an exclusive lock for ``key`` in ``folder`` (blocks while another process holds it)."""
    with open(folder / f".{key}.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"poselift weights: waiting for another process to finish fetching {key}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mirror_url(file: str) -> str | None:
    base = os.environ.get("POSELIFT_WEIGHTS_MIRROR", "").strip()
    return f"{base.rstrip('/')}/{urllib.parse.quote(file)}" if base else None


def _opener() -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener._poselift_jar = jar  # type: ignore[attr-defined]  # Drive's token may come as a cookie
    return opener


def _gdrive_open(opener: urllib.request.OpenerDirector, file_id: str, headers: dict[str, str]):
    """Open a Google Drive file, answering the 'cannot scan for viruses' confirmation page."""
    first = opener.open(urllib.request.Request(f"{GDRIVE_URL}&id={file_id}", headers=headers),
                        timeout=TIMEOUT_S)
    if "text/html" not in first.headers.get("Content-Type", ""):
        return first
    page = first.read(1 << 20).decode("utf-8", "replace")
    first.close()
    token = None
    for c in getattr(opener, "_poselift_jar", []):
        if c.name.startswith("download_warning"):
            token = c.value
    fields = dict(re.findall(r'name="([A-Za-z_]+)"\s+value="([^"]*)"', page))
    token = token or fields.get("confirm") or next(iter(re.findall(r"confirm=([0-9A-Za-z_-]+)", page)), None)
    if not token:
        raise _Interrupted("Google Drive answered with a page and no confirmation token (quota "
                           "exceeded or the file is not shared publicly)")
    action = next(iter(re.findall(r'<form[^>]+action="([^"]+)"', page)), None) or GDRIVE_URL
    action = urllib.parse.urljoin(GDRIVE_URL, action.replace("&amp;", "&"))
    query = {"id": file_id, "export": "download", **fields, "confirm": token}
    sep = "&" if "?" in action else "?"
    resp = opener.open(urllib.request.Request(action + sep + urllib.parse.urlencode(query),
                                              headers=headers), timeout=TIMEOUT_S)
    if "text/html" in resp.headers.get("Content-Type", ""):
        resp.close()
        raise _Interrupted("Google Drive refused the download after the confirmation step "
                           "(quota exceeded or access denied)")
    return resp


def _one_attempt(url: str, part: Path, label: str, progress: bool) -> None:
    """Download ``url`` into ``part``, resuming from its current size (HTTP Range)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "poselift-weights"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    opener = _opener()
    try:
        if url.startswith("gdrive:"):
            resp = _gdrive_open(opener, url[len("gdrive:"):], headers)
        else:
            resp = opener.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the partial file is already whole or stale: start over
            part.unlink()
            raise _Interrupted("server refused the resume range; restarting") from None
        raise
    if "text/html" in resp.headers.get("Content-Type", ""):
        resp.close()
        raise _NotAFile("the host answered with a web page instead of the file (moved, expired or "
                        "needs a browser)")
    with resp:
        status = getattr(resp, "status", 200)
        rng = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
        resumed = status == 206 and offset and rng is not None and int(rng.group(1)) == offset
        mode = "ab" if resumed else "wb"  # a server that ignores Range sends the whole file
        if mode == "wb":
            offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        from poselift.core.progress import progress_bar

        # A bar on a terminal, plain periodic lines in a log (the rule of every long step).
        with open(part, mode) as fh, progress_bar(total=total, desc=label, unit="B", progress=progress,
                                                  leave=False, initial=offset, unit_scale=True) as bar:
            got = _copy(resp, fh, bar)
    if length is not None and got < int(length):
        raise _Interrupted(f"connection closed after {offset + got} of {total} bytes")


def _copy(resp: IO[bytes], fh: IO[bytes], bar) -> int:
    got = 0
    try:
        while chunk := resp.read(CHUNK):
            fh.write(chunk)
            got += len(chunk)
            bar.update(len(chunk))
    except http.client.IncompleteRead as e:
        fh.write(e.partial)
        got += len(e.partial)
    return got


def _download(entry: ZooEntry, file: str, dest: Path, progress: bool) -> None:
    """Fetch ``file`` (the entry's file or its archive) into ``dest`` via ``dest.part``."""
    urls = [u for u in [_mirror_url(file)] if u] or list(entry.urls)
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in urls:
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                _one_attempt(url, part, file, progress)
                os.replace(part, dest)
                return
            except (_Interrupted, _NotAFile, urllib.error.URLError, http.client.HTTPException,
                    OSError) as e:
                reason = getattr(e, "reason", None) or str(e) or type(e).__name__
                errors.append(f"{url}: {reason}")
                if isinstance(e, _NotAFile) or (isinstance(e, urllib.error.HTTPError)
                                                and e.code in (401, 403, 404)):
                    break  # not transient: try the next URL
    kept = f" (partial download kept at {part}, resumed next time)" if part.exists() else ""
    raise WeightsError(f"could not download {file} for weights {entry.name!r} from "
                       f"{errors[-1] if errors else entry.url}{kept}; {_by_hand(entry, dest)}")


def _extract_member(entry: ZooEntry, archive: Path, dest: Path) -> None:
    member = entry.archive["member"]  # type: ignore[index]
    tmp = dest.with_name(dest.name + ".part")
    try:
        names = _copy_member(archive, member, tmp)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        archive.unlink()  # truncated or corrupt: the next run downloads it again
        raise WeightsError(f"{archive}: unreadable archive ({e}); removed, run again to re-download, "
                           f"or {_by_hand(entry, dest)}") from None
    if names is None:
        archive.unlink()
        raise WeightsError(f"{archive}: neither a zip nor a tar archive (removed; run again to "
                           f"re-download), or {_by_hand(entry, dest)}")
    if not names:
        raise WeightsError(f"{archive}: holds no member named {member} for weights "
                           f"{entry.name!r}; {_by_hand(entry, dest)}")
    os.replace(tmp, dest)


def _copy_member(archive: Path, member: str, tmp: Path) -> list[str] | None:
    """Copy the first member whose base name is ``member`` to ``tmp``; the matches, or None
    when ``archive`` is neither zip nor tar."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if Path(n).name == member]
            if names:
                with zf.open(names[0]) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            names = [m.name for m in tf.getmembers() if m.isfile() and Path(m.name).name == member]
            if names:
                src = tf.extractfile(names[0])
                with src, open(tmp, "wb") as out:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, out)
    else:
        return None
    return names


def _check_hash(entry: ZooEntry, dest: Path, quiet: bool) -> None:
    got = file_sha256(dest)
    want = entry.sha256 if entry.sha256 != UNKNOWN else None
    ok = got == want if want else (got.startswith(entry.sha256_prefix) if entry.sha256_prefix else True)
    if not ok:
        dest.unlink()
        if entry.archive:  # the member came from a cached archive: fetch that again too
            (dest.parent / "archives" / entry.archive["file"]).unlink(missing_ok=True)
        expect = want or f"a hash starting {entry.sha256_prefix}"
        raise WeightsError(f"{dest.name} for weights {entry.name!r} has sha256 {got}, expected "
                           f"{expect}: corrupt or changed upstream; the file was removed, run again "
                           f"to re-download, or {_by_hand(entry, dest)}")
    if not want:
        prev = recorded_sha256(dest)
        if prev and prev != got:  # no published hash to judge by: say so, keep the new file
            _say(f"poselift weights: warning: {dest.name} now has sha256 {got}, an earlier download "
                 f"had {prev} (changed upstream?)")
        _sidecar(dest).write_text(f"{got}  {dest.name}\n")
        if not quiet:
            _say(f"poselift weights: sha256 of {dest.name} = {got} (recorded in "
                 f"{_sidecar(dest).name}; the project publishes no full hash)")


def fetch(name: str, *, progress: bool = True, quiet: bool = False) -> Path:
    """The cached file of zoo entry ``name``, downloading and verifying it first if needed."""
    entry = get_entry(name)
    folder = weights_dir()
    dest = cached_path(entry)
    if dest.is_file():
        return dest
    if entry.manual:
        raise WeightsError(f"weights {name!r} need a manual download: "
                           f"{(entry.manual_instructions or '').rstrip('.')}; place the file at {dest}")
    archive = folder / "archives" / entry.archive["file"] if entry.archive else None
    if _offline() and not (archive and archive.is_file()):  # a cached archive needs no network
        raise WeightsError(f"weights {name!r}: {entry.file} is not in the cache and POSELIFT_OFFLINE=1; "
                           f"{_by_hand(entry, dest)}")
    _writable_dir(entry, folder, dest)
    with _locked(folder, entry.archive["file"] if entry.archive else entry.file):
        if dest.is_file():  # another process fetched it while we waited
            return dest
        if not quiet and entry.noncommercial:
            _say(f"poselift weights: {name} is licensed {entry.licence}")
        if archive:
            if not archive.is_file():
                archive.parent.mkdir(exist_ok=True)
                _download(entry, archive.name, archive, progress)
            _extract_member(entry, archive, dest)
        else:
            _download(entry, entry.file, dest, progress)
        _check_hash(entry, dest, quiet)
    return dest


def resolve_weights(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint path for a zoo name (fetched when needed) or a path (returned as is).

    Anything that exists, contains a path separator or ends in a checkpoint suffix is a
    path; anything else must be a zoo name (an unknown one raises FileNotFoundError naming
    the closest names).
    """
    s = os.fspath(name_or_path)
    if is_zoo_name(s):
        return fetch(s)
    if os.path.exists(s) or os.sep in s or "/" in s or "." in Path(s).name:
        return Path(s)
    try:
        get_entry(s)
    except UnknownWeightsError as e:  # loaders' callers expect a missing file to be this error
        raise FileNotFoundError(f"{s}: no such file, and {e}") from None
    return Path(s)


def weights_name(name_or_path: str | os.PathLike) -> str | None:
    """The zoo name when ``name_or_path`` is one (for provenance), else None."""
    return os.fspath(name_or_path) if is_zoo_name(name_or_path) else None
