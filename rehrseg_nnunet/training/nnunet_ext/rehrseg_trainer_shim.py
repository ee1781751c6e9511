# Found by nnU-Net through nnUNet_extTrainer; the classes live in the importable package (spawn pickling).
from rehrseg_nnunet.training.trainer import *  # noqa: F401,F403

# stock nnUNetv2_predict imports this shim to find the trainer: give it REHRSeg's input checks and windows
from rehrseg_nnunet.predict import install_stock_predictor_hook  # noqa: E402

install_stock_predictor_hook()
