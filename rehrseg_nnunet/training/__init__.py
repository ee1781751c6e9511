"""REHRSegTrainer and its variants; ``EXT_TRAINER_FOLDER`` is what ``nnUNet_extTrainer`` must point at."""

import os

EXT_TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_ext")
