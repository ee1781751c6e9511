# Found by nnU-Net through nnUNet_extTrainer; the classes live in the importable package (spawn pickling).
# stock nnUNetv2_predict imports this shim to find the trainer: give it REHRSeg's input checks and windows
from rehrseg_nnunet.predict import install_stock_predictor_hook  # noqa: E402
from rehrseg_nnunet.training.trainer import *  # noqa: F401,F403
from rehrseg_nnunet.training.variants import *  # noqa: F401,F403

install_stock_predictor_hook()
