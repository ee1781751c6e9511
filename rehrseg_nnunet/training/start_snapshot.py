"""A refused or failed start of a REHRSeg training leaves the results tree as it was.

nnU-Net's trainer creates its fold folder and its log in ``__init__``, and writes ``debug.json``, the plans and the
lock before the first epoch; a start refused in one line (too few cases for the fold, missing uncertainty maps, a
damaged checkpoint, a fold another process trains) would otherwise leave them behind. A :class:`StartSnapshot`
taken before nnU-Net's ``__init__`` removes what the run added when its start fails.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def fold_folder_of(results: str | None, plans: dict, configuration: str, fold, trainer_name: str) -> str | None:
    """The fold folder nnU-Net's trainer will use (nnUNetTrainer.__init__'s naming), None without nnUNet_results."""
    if results is None:
        return None
    return os.path.join(results, plans["dataset_name"], f"{trainer_name}__{plans['plans_name']}__{configuration}",
                        f"fold_{fold}")


def files_below(folder: str) -> frozenset[str]:
    """Every file below ``folder`` (empty when it does not exist)."""
    return frozenset(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names)


def folders_below(folder: str) -> frozenset[str]:
    """Every folder below ``folder``, itself excluded."""
    return frozenset(root for root, _, _ in os.walk(folder)) - {folder}


@dataclass(frozen=True)
class StartSnapshot:
    """What a fold's results held before a training started.

    Args:
        fold_folder: the fold's output folder.
        new_folders: the fold folder and its two parents (trainer folder, dataset folder) that did not exist yet,
            deepest first.
        fold_files: the files below the fold folder.
        fold_subfolders: the folders below the fold folder.
        trainer_files: the files directly in the trainer folder (plans.json, dataset.json, ...).
    """

    fold_folder: str
    new_folders: tuple[str, ...]
    fold_files: frozenset[str]
    fold_subfolders: frozenset[str]
    trainer_files: frozenset[str]

    @classmethod
    def take(cls, fold_folder: str) -> StartSnapshot:
        trainer_folder = os.path.dirname(fold_folder)
        chain = (fold_folder, trainer_folder, os.path.dirname(trainer_folder))
        trainer_files = frozenset(os.path.join(trainer_folder, name) for name in os.listdir(trainer_folder)
                                  if os.path.isfile(os.path.join(trainer_folder, name))) \
            if os.path.isdir(trainer_folder) else frozenset()
        return cls(fold_folder, tuple(f for f in chain if not os.path.isdir(f)), files_below(fold_folder),
                   folders_below(fold_folder), trainer_files)

    def undo(self, owned: bool, log_file: str | None) -> None:
        """Remove what this run added: every new file of the fold when it held the fold's lock (nothing else can
        have written there), else only its own log; the trainer folder's new files only when this run created that
        folder; then the folders it created, where empty.

        Args:
            owned: this run claimed the fold's training lock.
            log_file: this run's training log.
        """
        if owned:
            added = files_below(self.fold_folder) - self.fold_files
        else:
            added = {log_file} if log_file and log_file not in self.fold_files else set()
        trainer_folder = os.path.dirname(self.fold_folder)
        if trainer_folder in self.new_folders and os.path.isdir(trainer_folder):
            added |= {os.path.join(trainer_folder, name) for name in os.listdir(trainer_folder)
                      if os.path.isfile(os.path.join(trainer_folder, name))} - self.trainer_files
        for path in added:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        if owned:  # folders the failed start made inside the fold (e.g. validation), deepest first
            for folder in sorted(folders_below(self.fold_folder) - self.fold_subfolders, key=len, reverse=True):
                remove_if_empty(folder)
        for folder in self.new_folders:
            remove_if_empty(folder)


def remove_if_empty(folder: str) -> None:
    try:
        os.rmdir(folder)
    except OSError:  # not empty (or gone): something else lives there
        pass
