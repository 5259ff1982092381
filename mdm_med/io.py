"""Atomic file and folder writes: nothing on disk is ever left half-written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["atomic_write", "build_folder_atomically", "fill_folder_atomically"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> str:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then ``os.replace`` it into place (mode 644).

    On any error the temporary file is removed and ``path`` keeps its previous content.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = ".nii.gz" if str(path).endswith(".nii.gz") else os.path.splitext(str(path))[1]  # writers read it
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return str(path)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _file_list(expected_files: Callable[[dict], Iterable[str]] | Iterable[str], params: dict) -> list[str]:
    return list(expected_files(params) if callable(expected_files) else expected_files)


def _is_built(folder: Path, params: dict, expected_files, marker: str) -> bool:
    """True when ``folder`` holds ``marker`` equal to ``params`` and every expected file."""
    if _read_json(folder / marker) != params:
        return False
    return all((folder / name).is_file() for name in _file_list(expected_files, params))


def _foreign_files(folder: Path, own: set[str]) -> list[str]:
    """Files (and links) under ``folder`` whose relative posix path is not in ``own``, sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        for name in files + links:
            rel = Path(os.path.relpath(os.path.join(root, name), folder)).as_posix()
            if rel not in own:
                found.append(rel)
    return sorted(found)


def _check_replaceable(out_dir: Path, params: dict, expected_files, marker: str) -> None:
    """Raise ``FileExistsError`` unless ``out_dir`` is missing, empty, or only an earlier set of this generator."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if not any(out_dir.iterdir()):
        return
    generator = params.get("generator")
    old = _read_json(out_dir / marker)
    if not isinstance(old, dict) or old.get("generator") != generator:
        raise FileExistsError(f"{out_dir} is not empty and holds no {marker} of {generator}; not replacing it")
    try:
        own = set(_file_list(expected_files, old)) | {marker}
    except (KeyError, TypeError, ValueError):  # a marker of another layout version: keep only the marker
        own = {marker}
    foreign = _foreign_files(out_dir, own)
    if foreign:
        raise FileExistsError(f"{out_dir} holds files that are not part of a {generator} set "
                              f"(e.g. {foreign[0]!r}); not replacing it")


def build_folder_atomically(
    out_dir: str | os.PathLike,
    params: dict,
    fill: Callable[[Path], object],
    expected_files: Callable[[dict], Iterable[str]] | Iterable[str],
    marker: str = "demo.json",
) -> Path:
    """Build the folder ``out_dir`` all at once and return its resolved path.

    Reused untouched when its ``marker`` (JSON) equals ``params`` and every ``expected_files`` path (relative,
    posix; a list or a function of the params) is a file. Otherwise ``fill(tmp)`` writes into a temporary sibling
    folder, the marker is written last, and the folder is swapped into place; the old folder is moved aside and
    deleted, and a complete set that another process put in place meanwhile is accepted. On any error the
    temporary folder is removed. A non-empty ``out_dir`` is only replaced when its marker names the same
    ``params["generator"]`` and it holds nothing but that earlier set's files, else ``FileExistsError``.
    """
    out_dir = Path(out_dir).resolve()
    if _is_built(out_dir, params, expected_files, marker):
        return out_dir
    _check_replaceable(out_dir, params, expected_files, marker)

    def fill_then_mark(tmp: Path) -> None:
        fill(tmp)
        # The marker goes last: a folder without it is never taken as complete.
        (tmp / marker).write_text(json.dumps(params, indent=2) + "\n")

    return fill_folder_atomically(out_dir, fill_then_mark, lambda: _is_built(out_dir, params, expected_files, marker))


def fill_folder_atomically(out_dir: str | os.PathLike, fill: Callable[[Path], object],
                           already_built: Callable[[], bool] = lambda: False) -> Path:
    """``fill(tmp)`` a temporary sibling of ``out_dir`` (with the permissions of a plain new folder), then swap it
    into place whole (``_swap_into_place``); the temporary folder is removed on any error. Returns ``out_dir``."""
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private
        fill(tmp)
        _swap_into_place(tmp, out_dir, already_built)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap
    return out_dir


def _swap_into_place(tmp: Path, out_dir: Path, already_built: Callable[[], bool]) -> None:
    """Rename ``tmp`` to ``out_dir``; an old ``out_dir`` is moved aside first (put back if the rename fails)."""
    aside = None
    if out_dir.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, aside / "data")
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if not already_built():  # another process may have put the same complete set in place meanwhile
            if aside is not None and not out_dir.exists():
                os.replace(aside / "data", out_dir)
            raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
