# Found by nnU-Net through nnUNet_extTrainer; the classes live in the importable package (spawn pickling).
from rehrseg_nnunet.training.trainer import *  # noqa: F401,F403
