"""Writing files so that no reader ever sees a partial one: atomic renames, and images verified after writing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zipfile
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
    file and a complete previous one. The SHA-256 record of ``path`` (if any) is kept for ``previous`` too."""
    if not os.path.isfile(path):
        return
    write_hash(previous, recorded_hash(path) or None)  # before the link: a kill between leaves a mismatch, not a pass
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


# --- checkpoint hashes: a sidecar ``NAME.sha256`` beside every checkpoint -------------------------------------
#: ending of the file holding a checkpoint's SHA-256 (``sha256sum`` format: ``HEX  NAME``)
HASH_SUFFIX = ".sha256"
#: checkpoints already reported as written before they carried a SHA-256 (reported once per process)
_UNVERIFIED_REPORTED: set[str] = set()


def file_sha256(path: str) -> str:
    """SHA-256 of a file, read in blocks.

    Args:
        path: the file.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_file(path: str) -> str:
    """Where the SHA-256 of checkpoint ``path`` is recorded."""
    return path + HASH_SUFFIX


def write_hash(path: str, digest: str | None) -> None:
    """Record ``digest`` as the SHA-256 of ``path`` (atomically); ``None`` removes the record."""
    if digest is None:
        if os.path.lexists(hash_file(path)):
            os.remove(hash_file(path))
        return
    write_atomically(hash_file(path), lambda handle: handle.write(f"{digest}  {os.path.basename(path)}\n".encode()))


def recorded_hash(path: str) -> str | None:
    """The SHA-256 recorded for ``path``: None when there is no record (a checkpoint from before records were
    written), ``""`` when the record is unreadable (which no file matches)."""
    record = hash_file(path)
    if not os.path.isfile(record):
        return None
    try:
        with open(record) as handle:
            words = handle.read().split()
    except (OSError, UnicodeDecodeError):
        return ""
    return words[0] if words and len(words[0]) == 64 else ""


def hash_mismatch(path: str, log: Callable[[str], None] | None = None) -> str | None:
    """Why ``path`` is not the file its SHA-256 record names (None when it matches, or has no record: then
    ``log`` is told once per process that it loads unverified).

    Args:
        path: a checkpoint.
        log: where the one "unverified" line goes (nowhere when None).

    Returns:
        A short reason for a mismatch, or None.
    """
    expected = recorded_hash(path)
    if expected is None:
        if log is not None and path not in _UNVERIFIED_REPORTED:
            _UNVERIFIED_REPORTED.add(path)
            log(f"{path} has no SHA-256 record ({os.path.basename(hash_file(path))}; written before checkpoints "
                "carried one): loading it unverified")
        return None
    actual = file_sha256(path) if os.path.isfile(path) else "missing"
    if actual == expected:
        return None
    return (f"its SHA-256 {actual[:12]}... differs from the {expected[:12] or 'unreadable record'}... recorded in "
            f"{os.path.basename(hash_file(path))}: the file is damaged")


def checkpoint_damage(path: str, log: Callable[[str], None] | None = None) -> str | None:
    """Why a checkpoint must not be unpickled, told from its bytes alone: unpickling a damaged file can raise
    almost any error or ask for gigabytes, so a checkpoint whose SHA-256 differs from its record is refused unread.

    Args:
        path: a checkpoint (a torch zip archive).
        log: where the one "unverified" line of a checkpoint without a record goes (see :func:`hash_mismatch`).

    Returns:
        ``"truncated or unreadable (...)"`` when it differs from its record and is no complete zip archive,
        ``"damaged (...)"`` when it differs otherwise, None when it matches its record or has none.
    """
    mismatch = hash_mismatch(path, log)
    if mismatch is None:
        return None
    if not zipfile.is_zipfile(path):
        return "truncated or unreadable (not a complete zip archive, and its SHA-256 differs from its record)"
    return f"damaged ({mismatch})"


def write_checkpoint_bytes(path: str, data: bytes) -> str:
    """Write a checkpoint's bytes atomically with their SHA-256 record (the record first: a kill between the
    two renames leaves a checkpoint that fails its check, never a damaged one that passes).

    Args:
        path: the checkpoint file.
        data: its content.

    Returns:
        The SHA-256.
    """
    digest, before = hashlib.sha256(data).hexdigest(), recorded_hash(path)
    write_hash(path, digest)
    try:
        write_atomically(path, lambda handle: handle.write(data))
    except RehrsegInputError:
        try:
            write_hash(path, before or None)  # the checkpoint stayed as it was: so does its record
        except (OSError, RehrsegInputError):
            pass  # the record then fails the check, which falls back to the previous checkpoint
        raise
    return digest


def publish_checkpoint(partial: str, path: str) -> None:
    """Rename a finished checkpoint file into place together with its SHA-256 record (read back from disk)."""
    write_hash(path, file_sha256(partial))
    os.replace(partial, path)


def promote_checkpoint(source: str, path: str) -> None:
    """Move checkpoint ``source`` (and its SHA-256 record) to ``path``, replacing a damaged one."""
    write_hash(path, recorded_hash(source) or None)
    os.replace(source, path)
    write_hash(source, None)


def remove_checkpoint(path: str) -> None:
    """Delete a checkpoint and its SHA-256 record (where present)."""
    for name in (path, hash_file(path)):
        if os.path.lexists(name):
            os.remove(name)


def claim_lock(lock: str) -> int:
    """Create the lock file ``lock`` holding this process's id, unless a live process holds it (the lock of a
    process that is gone is taken over).

    Args:
        lock: the lock file.

    Returns:
        0 when this process holds the lock now; else the holder's id (-1: a holder that has not written it yet).
    """
    while True:
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(lock) as existing:
                    owner = int(existing.read().strip() or 0)
                being_claimed = not owner and time.time() - os.path.getmtime(lock) < 10
            except FileNotFoundError:
                continue  # released meanwhile
            except (OSError, ValueError):
                owner, being_claimed = 0, False
            if being_claimed:
                return -1
            if owner and owner != os.getpid() and process_alive(owner):
                return owner
            if os.path.lexists(lock):
                os.remove(lock)  # left by a process that is gone
            continue
        with os.fdopen(handle, "w") as claimed:
            claimed.write(str(os.getpid()))
        return 0
