"""Variants of REHRSegTrainer (ablations, short schedules) and stock nnU-Net on the same short schedules,
as explicit classes named the nnU-Net way (``REHRSegTrainer_<variant>``) so that ``-tr`` and grep find them."""

from __future__ import annotations

import os

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from rehrseg_nnunet.file_writing import write_json_atomically
from rehrseg_nnunet.training.trainer import DEFAULT_DEVICE, REHRSegTrainer

__all__ = ["REHRSegTrainer_paper", "REHRSegTrainer_hrStem", "REHRSegTrainer_hrLevel", "REHRSegTrainer_noUASR",
           "REHRSegTrainer_noDistill", "REHRSegTrainer_noHRHead", "REHRSegTrainer_lrDice", "REHRSegTrainer_mirror",
           "REHRSegTrainer_fgOversample", "REHRSegTrainer_lrCentre", "REHRSegTrainer_fineTuneLr1en2",
           "REHRSegTrainer_debug", "REHRSegTrainer_paper_debug", "REHRSegTrainer_hrStem_debug",
           "REHRSegTrainer_hrLevel_debug",
           "REHRSegTrainer_noUASR_debug", "REHRSegTrainer_noDistill_debug", "REHRSegTrainer_noHRHead_debug",
           "REHRSegTrainer_cpu", "REHRSegTrainer_noUASR_cpu", "REHRSegTrainer_noDistill_cpu",
           "REHRSegTrainer_noHRHead_cpu", "REHRSegTrainer_cpu50epochs", "nnUNetTrainer_cpu",
           "nnUNetTrainer_cpu16epochs", "REHRSegTrainer_cpuSmoke", "REHRSegTrainer_hrStem_cpuSmoke",
           "nnUNetTrainer_cpuSmoke",
           "nnUNetTrainer_cpuSmoke4epochs"]


class REHRSegTrainer_paper(REHRSegTrainer):
    """The paper's network: the HR head sees the slice-upsampled LR decoder map only (no SR model needed to
    predict: the thick-slice input goes in as it is). ``REHRSegTrainer`` trains the same design; this name stays
    so that results and exported models trained under it keep their trainer."""

    hr_guidance = "none"


class REHRSegTrainer_hrStem(REHRSegTrainer):
    """HR guidance design (a): an HR stem on the full-resolution input, fused into the HR head's first conv."""

    hr_guidance = "stem"


class REHRSegTrainer_hrLevel(REHRSegTrainer):
    """HR guidance design (b): a full-resolution first encoder / last decoder level around the LR U-Net."""

    hr_guidance = "level"


class REHRSegTrainer_noUASR(REHRSegTrainer):
    """Ablation: unweighted LR loss (CE + Dice)."""

    use_uncertainty = False


class REHRSegTrainer_noDistill(REHRSegTrainer):
    """Ablation: no structural / cosine distillation (no SR teacher needed)."""

    use_distillation = False


class REHRSegTrainer_lrDice(REHRSegTrainer):
    """Ablation: UASR-weighted LR cross-entropy plus nnU-Net's soft Dice on the LR targets."""

    lr_dice_with_uncertainty = True


class REHRSegTrainer_mirror(REHRSegTrainer):
    """Ablation: training augmentation mirrors the two in-plane axes (never the slice axis)."""

    training_mirror_axes = (1, 2)


class REHRSegTrainer_lrCentre(REHRSegTrainer):
    """Ablation: the LR target of each group of r HR label slices is its centre slice, not the majority."""

    lr_target_rule = "centre"


class REHRSegTrainer_fineTuneLr1en2(REHRSegTrainer):
    """Ablation: fine-tuning from the LR nnU-Net starts at nnU-Net's default lr 1e-2, not METHOD.md's 1e-3."""

    fine_tuning_lr = 1e-2


class REHRSegTrainer_fgOversample(REHRSegTrainer):
    """Ablation: every patch centred on a foreground voxel of a class drawn uniformly among the case's classes
    (nnU-Net's default forces this for a third of each batch: one patch in two at batch size 2)."""

    def __init__(self, plans, configuration, fold, dataset_json, device=DEFAULT_DEVICE):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.oversample_foreground_percent = 1.0


class REHRSegTrainer_noHRHead(REHRSegTrainer):
    """Ablation: LR losses only; HR logits at inference are the LR logits upsampled along the slice axis."""

    use_hr_head = False
    hr_guidance = "none"  # no HR head, so nothing would use the full-resolution input

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     num_output_channels, enable_deep_supervision)
        network.hr_from_lr = True
        return network


class ShortSchedule:
    """Mixin of the short-schedule variants (tests, CPU runs): ``schedule_epochs`` x ``schedule_iterations``,
    2 validation iterations, a checkpoint every epoch (so ``--c`` never repeats epochs from checkpoint_best).

    With ``skip_validation_of_fold_all`` the final validation (nnUNetv2_train predicts every validation
    case) is skipped for fold ``all``: those cases are the training cases, and on a CPU predicting full
    volumes costs minutes per case.
    """

    schedule_epochs: int = 2
    schedule_iterations: int = 3
    skip_validation_of_fold_all: bool = False
    #: progress.png is redrawn every ``plot_every`` epochs and after the last, not after each epoch as nnU-Net
    #: does: drawing it takes about 1 s on 2 CPU cores, a third of a short thick-slice epoch
    plot_every: int = 4

    # the same parameter names as nnUNetTrainer.__init__: it records them (my_init_kwargs) from this signature
    def __init__(self, plans, configuration, fold, dataset_json, device=DEFAULT_DEVICE):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.schedule_epochs
        self.num_iterations_per_epoch = self.schedule_iterations
        self.num_val_iterations_per_epoch = 2
        self.save_every = 1

    def run_training(self) -> None:
        self.trained_in_this_process = True
        super().run_training()

    def on_epoch_end(self) -> None:
        epoch = self.current_epoch
        if epoch == self.num_epochs - 1 or (epoch + 1) % self.plot_every == 0:
            super().on_epoch_end()
            return
        self.logger.plot_progress_png = lambda output_folder: None  # this epoch only
        try:
            super().on_epoch_end()
        finally:
            del self.logger.plot_progress_png

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """After training, fold ``all`` skips nnU-Net's final validation (it would predict the training cases at
        full size) and writes a ``validation/summary.json`` that says so, so nnU-Net's export finds the file it
        packs. ``nnUNetv2_train --val`` (no training in this process) validates for real."""
        if not (self.skip_validation_of_fold_all and self.fold == "all"
                and getattr(self, "trained_in_this_process", False)):
            super().perform_actual_validation(save_probabilities)
            return
        reason = ("final validation skipped: fold 'all' validates on the training cases; run nnUNetv2_train ... "
                  "--val to validate anyway")
        self.print_to_log_file(reason)
        folder = os.path.join(self.output_folder, "validation")
        os.makedirs(folder, exist_ok=True)
        write_json_atomically(os.path.join(folder, "summary.json"),
                              {"rehrseg_validation": reason, "foreground_mean": None, "mean": {},
                               "metric_per_case": []})


# --- test schedules: 2 epochs of 3 iterations, final validation kept ----------------------------------------
class REHRSegTrainer_debug(ShortSchedule, REHRSegTrainer):
    """REHRSegTrainer for 2 epochs of 3 iterations."""


class REHRSegTrainer_paper_debug(ShortSchedule, REHRSegTrainer_paper):
    """REHRSegTrainer_paper for 2 epochs of 3 iterations."""


class REHRSegTrainer_hrStem_debug(ShortSchedule, REHRSegTrainer_hrStem):
    """REHRSegTrainer_hrStem for 2 epochs of 3 iterations."""


class REHRSegTrainer_hrLevel_debug(ShortSchedule, REHRSegTrainer_hrLevel):
    """REHRSegTrainer_hrLevel for 2 epochs of 3 iterations."""


class REHRSegTrainer_noUASR_debug(ShortSchedule, REHRSegTrainer_noUASR):
    """REHRSegTrainer_noUASR for 2 epochs of 3 iterations."""


class REHRSegTrainer_noDistill_debug(ShortSchedule, REHRSegTrainer_noDistill):
    """REHRSegTrainer_noDistill for 2 epochs of 3 iterations."""


class REHRSegTrainer_noHRHead_debug(ShortSchedule, REHRSegTrainer_noHRHead):
    """REHRSegTrainer_noHRHead for 2 epochs of 3 iterations."""


# --- CPU schedules: 8 epochs of 15 iterations (20 before 2026-12-07), no final validation of fold all -------
class CPUSchedule(ShortSchedule):
    schedule_epochs, schedule_iterations, skip_validation_of_fold_all = 8, 15, True


class REHRSegTrainer_cpu(CPUSchedule, REHRSegTrainer):
    """REHRSegTrainer for 8 epochs of 15 iterations."""


class REHRSegTrainer_noUASR_cpu(CPUSchedule, REHRSegTrainer_noUASR):
    """REHRSegTrainer_noUASR for 8 epochs of 15 iterations."""


class REHRSegTrainer_noDistill_cpu(CPUSchedule, REHRSegTrainer_noDistill):
    """REHRSegTrainer_noDistill for 8 epochs of 15 iterations."""


class REHRSegTrainer_noHRHead_cpu(CPUSchedule, REHRSegTrainer_noHRHead):
    """REHRSegTrainer_noHRHead for 8 epochs of 15 iterations."""


class REHRSegTrainer_cpu50epochs(CPUSchedule, REHRSegTrainer):
    """REHRSegTrainer for 50 epochs of 20 iterations (benchmarks/cpu_recipe.py's schedule)."""

    schedule_epochs, schedule_iterations = 50, 20


# stock nnU-Net on the same CPU schedule: the LR model that REHRSegTrainer_cpu fine-tunes from (8 epochs) and
# the LR baseline at the total budget of both (16 epochs), as the quick start compares them
class nnUNetTrainer_cpu(CPUSchedule, nnUNetTrainer):
    """nnUNetTrainer for 8 epochs of 15 iterations."""


class nnUNetTrainer_cpu16epochs(CPUSchedule, nnUNetTrainer):
    """nnUNetTrainer for 16 epochs of 15 iterations."""

    schedule_epochs = 16


# --- the quick start's pipeline at a smoke-test length (its test): 2 (REHRSeg, LR start) and 4 (LR comparison)
# epochs of 4 iterations ------------------------------------------------------------------------------------
class SmokeSchedule(ShortSchedule):
    schedule_epochs, schedule_iterations, skip_validation_of_fold_all = 2, 4, True


class REHRSegTrainer_cpuSmoke(SmokeSchedule, REHRSegTrainer):
    """REHRSegTrainer for 2 epochs of 4 iterations."""


class REHRSegTrainer_hrStem_cpuSmoke(SmokeSchedule, REHRSegTrainer_hrStem):
    """REHRSegTrainer_hrStem for 2 epochs of 4 iterations."""


class nnUNetTrainer_cpuSmoke(SmokeSchedule, nnUNetTrainer):
    """nnUNetTrainer for 2 epochs of 4 iterations."""


class nnUNetTrainer_cpuSmoke4epochs(SmokeSchedule, nnUNetTrainer):
    """nnUNetTrainer for 4 epochs of 4 iterations."""

    schedule_epochs = 4
