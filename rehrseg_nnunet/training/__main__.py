"""``python -m rehrseg_nnunet.training`` prints the line that lets nnU-Net find REHRSegTrainer."""

from rehrseg_nnunet.training import EXT_TRAINER_FOLDER

print(f"export nnUNet_extTrainer={EXT_TRAINER_FOLDER}")
