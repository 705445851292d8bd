"""Writing a set of output files all at once, or not at all, and replacing an earlier set whole."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import json
import math
import os
import shutil
import signal
from pathlib import Path

from ..errors import DiffeelError

MANIFEST = ".diffeel-output.json"  # what the last run wrote into an output folder
_STAGING = ".staging-"
# Files diffeel's eval, compare, stats and demo wrote before output folders had a manifest; such a
# folder is still replaced whole. (Not images/, labels/, manifest.csv: a benchmark looks like that.)
_EARLIER_OUTPUT_NAMES = ("results.json", "results.csv", "table.md", "curves.png", "curves.npz", "groups.png", "report.md",
                         "report.html", "fig*.png", "comparison.*", "conditions.md", "stats.json", "stats.md", "heatmap.png",
                         "sizes.png")


def check_output_dir(out, allowed: tuple[str, ...] | None = ()) -> Path:
    """Fail before any work if ``out`` cannot become an output folder: it is a file, lies under
    a file, or holds files diffeel did not write (other than the names in ``allowed``; with
    ``allowed=None`` the contents are the caller's business)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DiffeelError(f"--out {out} is an existing file, not a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DiffeelError(f"--out {out} lies under {parent}, which is a file")
            break
    if allowed is not None:
        _previous_files(out, allowed)
    return out


def check_resumable_dir(out, signs: tuple[str, ...], what: str) -> Path:
    """Fail before any work if ``out`` is a non-empty folder that shows none of ``signs`` (file
    names or glob patterns a run of this command writes first): its files are not ours, and a
    resuming command would write over them or append to them."""
    out = check_output_dir(out, allowed=None)
    if out.is_dir() and any(out.iterdir()) and not any(any(out.glob(sign)) for sign in signs):
        raise DiffeelError(f"--out {out} holds files that are not {what}; choose an empty or new folder")
    return out


def check_output_file(path) -> Path:
    """Fail before any work if ``path`` cannot become an output file (it is a folder, say)."""
    path = Path(path)
    if path.is_dir():
        raise DiffeelError(f"--out {path} is a folder; give a file name")
    check_output_dir(path.parent, allowed=None)  # a file may go into any folder, whatever else it holds
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_staging(out: Path) -> None:
    """Staging folders of runs that were killed (their process is gone) are deleted."""
    for path in out.parent.glob(f".{out.name}{_STAGING}*"):
        pid = path.name[len(f".{out.name}{_STAGING}") :].split("-", 1)[0]
        if path.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def exclusive_lock(lock_path, what: str):
    """Hold an exclusive lock on ``lock_path`` or fail at once, saying another run holds it."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(lock_path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise DiffeelError(f"another diffeel run is writing {what} (it holds {lock_path}); wait for it or choose another --out") from None
            raise
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino:
                break  # still the file on disk: the lock is ours
        handle.close()  # the holder before us removed the file while we waited: lock the new one
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        handle.close()


@contextlib.contextmanager
def _signals_held():
    """Delay SIGINT/SIGTERM while a few renames run, so that they finish as a group."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _previous_files(out: Path, allowed: tuple[str, ...]) -> list[str]:
    """The files an earlier diffeel run wrote into ``out``; refuse a folder diffeel did not write."""
    if not out.is_dir():
        return []
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text())["files"]
            if isinstance(files, list) and all(isinstance(f, str) and "/" not in f and f not in ("", ".", "..") for f in files):
                return files
        except (ValueError, KeyError, TypeError):
            pass
        raise DiffeelError(f"{manifest} is damaged; remove {out} or choose another --out")
    entries = sorted(p.name for p in out.iterdir() if p.name not in allowed)
    if entries and all(any(fnmatch.fnmatch(name, pattern) for pattern in _EARLIER_OUTPUT_NAMES) for name in entries):
        return entries  # written by a diffeel version that kept no manifest
    if entries:
        raise DiffeelError(f"--out {out} already holds files diffeel did not write (e.g. {entries[0]}); choose an empty or new folder")
    return []


@contextlib.contextmanager
def atomic_output_dir(out, allowed: tuple[str, ...] = ()):
    """Yield a staging folder beside ``out``; on success its files replace ``out``'s outputs.

    The set of files replaces the earlier run's set as a whole: files of an earlier run into the
    same folder that this run does not write are removed (``MANIFEST`` lists them); files diffeel
    did not write are never touched, and a non-empty folder without a manifest is refused (except
    for the names in ``allowed``, such as the demo's ``cache``). On any error or interrupt the
    staging folder is removed and ``out`` is left as it was; staging folders of killed runs are
    removed by the next run. Two runs into one ``out`` at once: the second fails at once.
    """
    out = check_output_dir(out, allowed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out.parent / f".{out.name}.lock", str(out)):
        _remove_stale_staging(out)
        previous = _previous_files(out, allowed)
        staging = out.parent / f".{out.name}{_STAGING}{os.getpid()}-{os.urandom(4).hex()}"
        staging.mkdir()
        try:
            yield staging
            written = sorted(p.name for p in staging.iterdir())
            (staging / MANIFEST).write_text(json.dumps({"files": written}, indent=1) + "\n")
            with _signals_held():
                out.mkdir(exist_ok=True)
                for name in previous:
                    target = out / name
                    if name not in written and name != MANIFEST:
                        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink(missing_ok=True)
                for name in [*written, MANIFEST]:
                    target = out / name
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    os.replace(staging / name, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _plain(value):
    """JSON-ready values: NaN becomes null (JSON has no NaN), numpy scalars become Python."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path, data) -> None:
    Path(path).write_text(json.dumps(_plain(data), indent=2) + "\n")


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())
