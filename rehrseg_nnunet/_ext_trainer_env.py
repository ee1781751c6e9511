"""Start-up hook: lets ``nnUNetv2_train -tr REHRSegTrainer`` find the trainer with no ``export`` line.

The installed ``rehrseg_nnunet_ext_trainer.pth`` imports this module when the interpreter starts (see
``setup.py``). It appends REHRSeg's shim folder to ``nnUNet_extTrainer``, which nnU-Net 2.8.1 reads as an
``os.pathsep`` list each time it looks a trainer up. Every path the user set is kept, in front, and the folder
is never added twice. ``REHRSEG_NO_EXT_TRAINER=1`` switches it off. Only ``os`` is imported: no torch, no nnU-Net.
"""

import os

EXT_TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "training", "nnunet_ext")
SWITCH_OFF_VARIABLE = "REHRSEG_NO_EXT_TRAINER"


def add_ext_trainer_folder(environ: "os._Environ[str] | dict[str, str]" = os.environ) -> None:
    """Append :data:`EXT_TRAINER_FOLDER` to ``nnUNet_extTrainer`` unless it is there or the hook is off."""
    if environ.get(SWITCH_OFF_VARIABLE, "").strip() not in ("", "0"):
        return
    current = environ.get("nnUNet_extTrainer", "")
    paths = [os.path.normpath(path) for path in current.split(os.pathsep) if path.strip()]
    if os.path.normpath(EXT_TRAINER_FOLDER) in paths:
        return
    kept = [current] if current.strip() else []
    environ["nnUNet_extTrainer"] = os.pathsep.join([*kept, EXT_TRAINER_FOLDER])


add_ext_trainer_folder()
