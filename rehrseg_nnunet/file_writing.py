"""Writing files so that no reader ever sees a partial one: atomic renames, and images verified after writing."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import BinaryIO

import numpy as np
import SimpleITK as sitk

from rehrseg_nnunet.errors import RehrsegInputError

TEMPORARY_SUFFIX = ".tmp"


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporary_files(folder: str) -> int:
    """Delete the temporaries (``NAME.PID.tmp``) of :func:`write_atomically` calls that a killed process left
    below ``folder``; those of live processes stay. Returns how many were deleted."""
    removed = 0
    for root, _, names in os.walk(folder):
        for name in names:
            stem, _, pid = name[: -len(TEMPORARY_SUFFIX)].rpartition(".")
            if name.endswith(TEMPORARY_SUFFIX) and stem and pid.isdigit() and not process_alive(int(pid)):
                os.remove(os.path.join(root, name))
                removed += 1
    return removed


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``write(handle)`` to a per-process temporary name beside ``path``, then rename:
    no reader ever sees a partial file, and an interrupted write leaves the previous version (or nothing).

    Raises:
        RehrsegInputError: the write failed (disk full, file-size limit, read-only folder); the temporary
            file is removed and ``path`` is untouched.
    """
    temporary = f"{path}.{os.getpid()}{TEMPORARY_SUFFIX}"
    try:
        with open(temporary, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:  # torch.save reports a short write as RuntimeError
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "the write stopped part-way"
        raise RehrsegInputError(f"could not write {path} ({reason}); free disk space, lift the "
                                f"file-size limit (ulimit -f) or choose a writable output folder, then run it again."
                                ) from error
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json_atomically(path: str, content: object) -> None:
    """``json.dump`` through :func:`write_atomically`."""
    write_atomically(path, lambda handle: handle.write(json.dumps(content, indent=2).encode()))


def save_npy_atomically(path: str, array: np.ndarray) -> None:
    """``np.save`` through :func:`write_atomically`."""
    write_atomically(path, lambda handle: np.save(handle, array))


def write_image_verified(image: sitk.Image, path: str) -> None:
    """``sitk.WriteImage`` (compressed), then read back and compared voxel for voxel.

    SimpleITK reports some failed writes (a file-size limit, a full disk) only on stderr and returns
    normally, leaving a truncated file that later reads as zero-filled: this turns them into an error.

    Raises:
        RehrsegInputError: naming the file and what to check.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        sitk.WriteImage(image, path, useCompression=True, compressionLevel=1)
        written = sitk.ReadImage(path)
    except (RuntimeError, OSError) as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise RehrsegInputError(f"writing {path} failed ({reason}); check free space, quotas and write permission "
                                f"in {folder}.") from None
    if written.GetSize() != image.GetSize() or not np.array_equal(sitk.GetArrayViewFromImage(written),
                                                                  sitk.GetArrayViewFromImage(image)):
        raise RehrsegInputError(f"{path} was not written completely (its read-back differs); check free space and the "
                                f"file-size limit (ulimit -f) for {folder}.")


#: hidden subfolder beside an output where images are written before their rename (``PID_NAME``)
PARTIAL_FOLDER = ".partial"


def partial_path(path: str) -> str:
    """Where :func:`write_image_atomically` writes ``path`` first: a hidden subfolder of its folder, so that the
    temporary keeps the file ending (the writer is chosen by it) yet never looks like an output or an input."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(os.path.join(folder, PARTIAL_FOLDER), exist_ok=True)
    return os.path.join(folder, PARTIAL_FOLDER, f"{os.getpid()}_{name}")


def remove_stale_partial_files(folder: str) -> int:
    """Delete what killed writers left in ``folder``'s partial subfolder (live writers' files stay).
    Returns how many were deleted."""
    partial = os.path.join(folder, PARTIAL_FOLDER)
    if not os.path.isdir(partial):
        return 0
    removed = 0
    for name in os.listdir(partial):
        pid = name.split("_", 1)[0]
        if not pid.isdigit() or not process_alive(int(pid)):
            os.remove(os.path.join(partial, name))
            removed += 1
    if not os.listdir(partial):
        os.rmdir(partial)
    return removed


def publish(partial: str, path: str) -> None:
    """Rename a finished partial file to its final name (and drop the partial folder once empty)."""
    os.replace(partial, path)
    try:
        os.rmdir(os.path.dirname(partial))
    except OSError:
        pass  # other files still being written there


def write_image_atomically(image: sitk.Image, path: str) -> None:
    """:func:`write_image_verified` to a partial file, then renamed: ``path`` is complete or absent."""
    partial = partial_path(path)
    try:
        write_image_verified(image, partial)
        publish(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def keep_as_previous(path: str, previous: str) -> None:
    """Make ``previous`` a copy of ``path`` (a hard link where the file system has them) without ``path`` ever
    being absent: call it before atomically replacing ``path``, so a kill at any moment leaves a complete latest
    file and a complete previous one."""
    if not os.path.isfile(path):
        return
    if os.path.isfile(previous) and os.path.samefile(path, previous):
        return  # a run killed between this call and the replace of ``path`` left them as one file already
    temporary = f"{previous}.{os.getpid()}{TEMPORARY_SUFFIX}"
    try:
        os.link(path, temporary)
    except OSError:  # no hard links here (some network file systems)
        shutil.copy2(path, temporary)
    os.replace(temporary, previous)
    if os.path.lexists(temporary):  # rename(2) does nothing when both names are links to one file
        os.remove(temporary)
