"""REHRSegTrainer and its variants; ``EXT_TRAINER_FOLDER`` is what ``nnUNet_extTrainer`` must point at.

After ``pip install`` (regular or editable) the start-up hook :mod:`rehrseg_nnunet._ext_trainer_env` appends it to
``nnUNet_extTrainer`` in every new interpreter; ``REHRSEG_NO_EXT_TRAINER=1`` switches that off.
"""

import os
import sys

EXT_TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_ext")


def fail(message: str) -> None:
    """Bad input under nnU-Net's own CLI (nnUNetv2_train): one line on stderr, exit status 2, no traceback."""
    print(f"REHRSegTrainer: error: {message}", file=sys.stderr)
    raise SystemExit(2)
