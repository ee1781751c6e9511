"""REHRSegTrainer: nnUNetTrainer on a pseudo-HR dataset with LR + HR losses and SR distillation.

Reach it with ``nnUNetv2_train D 3d_fullres F -tr REHRSegTrainer -p REHRSegPlans`` once
``nnUNet_extTrainer`` points at :data:`rehrseg_nnunet.training.EXT_TRAINER_FOLDER`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss, get_tp_fp_fn_tn
from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.helpers import dummy_context, softmax_helper_dim1
from torch import autocast
from torch.profiler import record_function

from rehrseg_nnunet.contract import StageContract
from rehrseg_nnunet.degradation import centre_slice_labels, labels_to_lr_tensor
from rehrseg_nnunet.errors import RehrsegInputError
from rehrseg_nnunet.file_writing import (
    TEMPORARY_SUFFIX,
    checkpoint_damage,
    claim_lock,
    keep_as_previous,
    promote_checkpoint,
    publish_checkpoint,
    recorded_hash,
    remove_checkpoint,
)
from rehrseg_nnunet.losses import (
    UncertaintyWeightedCE,
    UncertaintyWeightedCEAndDice,
    cosine_distillation,
    match_grid,
    structural_distillation,
)
from rehrseg_nnunet.network import REHRSegUNet, pool_thick_slices
from rehrseg_nnunet.planning import NETWORK_CLASS, PLANS_NAME
from rehrseg_nnunet.sr.carried import sr_model_payload
from rehrseg_nnunet.sr.config import checkpoint_sha256, final_checkpoint
from rehrseg_nnunet.training import fail
from rehrseg_nnunet.training.dataloader import UncertaintyDataLoader
from rehrseg_nnunet.training.fine_tuning import (
    FINE_TUNING_LR,
    LOADED_ATTRIBUTE,
    STATE_KEY,
    install_pretrained_weights_hook,
    unwrap,
)
from rehrseg_nnunet.training.start_snapshot import StartSnapshot, fold_folder_of
from rehrseg_nnunet.training.teacher import DistillationTeacher

__all__ = ["REHRSegTrainer", "fail"]

install_pretrained_weights_hook()

LATEST_CHECKPOINT, PREVIOUS_CHECKPOINT = "checkpoint_latest.pth", "checkpoint_previous.pth"
#: holds the PID of the process training a fold (nnUNetv2_train output folder)
TRAINING_LOCK = ".rehrseg_training.lock"

#: nnUNetTrainer.__init__'s default device (nnU-Net records the signature's defaults in its checkpoints)
DEFAULT_DEVICE = torch.device("cuda")


def _unreadable(path: str) -> str | None:
    """Why a checkpoint cannot be loaded (None when it can)."""
    try:
        torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - damaged bytes unpickle into any error (MemoryError, TypeError, ...)
        return f"{type(error).__name__}: {str(error).splitlines()[0][:80] if str(error) else 'unreadable'}"
    return None


class REHRSegTrainer(nnUNetTrainer):
    """The full method: UASR-weighted LR CE, HR CE + Dice, structural + cosine distillation, with the paper's HR
    head (LR features only); ``REHRSegTrainer_hrStem`` / ``_hrLevel`` guide the HR branch by the full-resolution
    (pseudo-HR / super-resolved) image."""

    #: how the HR branch sees the full-resolution input (network.HR_GUIDANCE_CHOICES; "none" = the paper's). The
    #: paper's head: ahead of the HR stem by 0.027 in the class mean of issue 34's three leave-one-out folds
    #: (benchmarks/results/brats_4x_cv.json) and cheaper to train and to predict
    hr_guidance: str = "none"
    use_uncertainty = True
    use_distillation = True
    use_hr_head = True
    #: add nnU-Net's soft Dice to the UASR-weighted LR cross-entropy (ablation; METHOD.md: CE only)
    lr_dice_with_uncertainty = False
    #: in-plane mirror axes of training augmentation (ablation; METHOD.md: none)
    training_mirror_axes: tuple[int, ...] | None = None
    #: LR target of each group of r HR label slices: "majority" (centre breaks ties; DESIGN.md) or "centre"
    #: (slice r // 2 of the group alone, one slice at the acquired position as the authors take it; ablation)
    lr_target_rule: str = "majority"
    #: initial lr of the poly schedule once -pretrained_weights loaded the LR nnU-Net (METHOD.md: 1e-3)
    fine_tuning_lr: float = FINE_TUNING_LR

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = DEFAULT_DEVICE):
        from nnunetv2.paths import nnUNet_results
        fold_folder = fold_folder_of(nnUNet_results, plans, configuration, fold, type(self).__name__)
        # before nnU-Net's __init__, which creates the fold folder: a failed start removes what it added
        self._start_snapshot = StartSnapshot.take(fold_folder) if fold_folder else None
        self._owns_fold = False
        super().__init__(plans, configuration, fold, dataset_json, device)
        with self._undone_if_refused():
            self._check_setup()

    @contextlib.contextmanager
    def _undone_if_refused(self) -> Iterator[None]:
        """A refused or failed start (one-line error or any exception) leaves the results tree as it was."""
        try:
            yield
        except BaseException:
            if self.local_rank == 0 and self._start_snapshot is not None \
                    and self._start_snapshot.fold_folder == self.output_folder:
                if self._owns_fold:
                    remove_checkpoint(os.path.join(self.output_folder, TRAINING_LOCK))
                self._start_snapshot.undo(self._owns_fold, getattr(self, "log_file", None))
            raise

    def _check_setup(self) -> None:
        """The plans, labels and stage contract this trainer needs, refused in one line."""
        if self.lr_target_rule not in ("majority", "centre"):
            fail(f"{type(self).__name__}.lr_target_rule is '{self.lr_target_rule}'; set it to 'majority' or "
                 "'centre'.")
        if self.configuration_manager.network_arch_class_name != NETWORK_CLASS:
            fail(f"plans '{self.plans_manager.plans_name}' do not build the REHRSeg network; run rehrseg_plan -d "
                 f"{self.plans_manager.dataset_name} and train with -p {PLANS_NAME}.")
        if self.label_manager.has_regions or self.label_manager.has_ignore_label:
            fail("region-based training and ignore labels are not supported by REHRSegTrainer.")
        self.contract = self._checked_contract()
        self.scale_factor = self.contract.scale_factor
        self.teacher: DistillationTeacher | None = None

    def _checked_contract(self) -> StageContract:
        """The dataset's stage contract, checked once against the plans' copy and the network's r."""
        dataset = self.plans_manager.dataset_name
        plans_source = f"plans '{self.plans_manager.plans_name}' of {dataset}"
        try:
            contract = StageContract.from_dataset_json(self.dataset_json, f"the dataset.json of {dataset}")
            planned = StageContract.from_plans_configuration(self.configuration_manager.configuration,
                                                             self.plans_manager.transpose_forward, plans_source)
            if planned is None:
                raise RehrsegInputError(f"{plans_source} carry no stage contract; run rehrseg_plan -d {dataset}.")
            contract.check_agrees(planned, f"the dataset.json of {dataset}", plans_source)
        except RehrsegInputError as error:
            fail(str(error))
        network_r = self.configuration_manager.network_arch_init_kwargs.get("scale_factor")
        if network_r != contract.scale_factor:
            fail(f"{plans_source} build a network for r = {network_r} but the data have r = {contract.scale_factor}; "
                 f"re-plan with rehrseg_plan -d {dataset}.")
        return contract

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        """The plans' REHRSegUNet with this trainer's ``hr_guidance`` (prediction rebuilds it through the trainer
        name stored in the checkpoint, so the plans stay those of every variant)."""
        kwargs = {**configuration_manager.network_arch_init_kwargs, "hr_guidance": cls.hr_guidance}
        return get_network_from_plans(configuration_manager.network_arch_class_name, kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import, num_input_channels,
                                      num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)

    def on_train_start(self) -> None:
        with self._undone_if_refused():
            self._claim_fold()
            self.load_teacher()
            super().on_train_start()  # builds the network (initialize) on a fresh start
            self.carry_sr_model()
            self._start_fine_tuning_if_pretrained()
        self._start_snapshot = None  # started: from here on, checkpoints and logs are the fold's own

    def carry_sr_model(self) -> None:
        """A guided network predicts from super-resolved images: copy the dataset's SR model (checksum checked
        against the stage contract) into the network's weights, so every checkpoint, export and install of
        the model carries it. A checkpoint resumed with --c already carries it."""
        network = self._unwrapped()
        if self.hr_guidance == "none" or not network.carried_sr.is_empty:
            return
        folder = self.contract.resolved_sr_model_folder()
        if not (folder and os.path.isdir(folder)):
            fail(f"the SR model folder {folder} recorded in the dataset's rehrseg block is missing; restore it (an "
                 f"SR-guided model carries it for prediction) or train {type(self).__name__.split('_')[0]}_paper.")
        try:
            network.carried_sr.carry(sr_model_payload(folder, self.contract.sr_stage or "1c",
                                                      self.contract.sr_checkpoint_sha256))
        except RehrsegInputError as error:
            fail(str(error))
        self.print_to_log_file(f"carrying the SR model of {folder} (stage {self.contract.sr_stage or '1c'}, "
                               f"{network.carried_sr.bundle.numel() / 1e6:.1f} MB) for prediction from "
                               "super-resolved images")

    def load_teacher(self) -> None:
        """The frozen SR network, for distillation: only training needs it, so validation, prediction and an
        installed model work without the SR model folder."""
        if not self.use_distillation or self.teacher is not None:
            return
        folder = self.contract.resolved_sr_model_folder()
        if not (folder and os.path.isdir(folder)):
            fail(f"the SR model folder {folder} recorded in the dataset's rehrseg block is missing; restore it "
                 f"(distillation needs it) or train REHRSegTrainer_noDistill.")
        stage = self.contract.sr_stage or "1c"
        expected = self.contract.sr_checkpoint_sha256
        if expected and checkpoint_sha256(folder, stage) != expected:
            fail(f"{final_checkpoint(folder, stage)} is not the SR network that made this dataset (its SHA-256 "
                 "differs from the dataset.json's); restore that model, or re-run rehrseg_make_pseudohr with this "
                 "one.")
        self.teacher = DistillationTeacher(folder, stage, self.device)

    # --- fine-tuning from the LR nnU-Net ----------------------------------------------------------------
    def _start_fine_tuning_if_pretrained(self) -> None:
        """After -pretrained_weights: fine-tuning lr, recorded in the checkpoint's init_args for --c."""
        loaded = getattr(self._unwrapped(), LOADED_ATTRIBUTE, None)
        if loaded and STATE_KEY not in self.my_init_kwargs:
            path, tensors = loaded
            self.my_init_kwargs[STATE_KEY] = {"initial_lr": self.fine_tuning_lr, "pretrained_weights": path}
            self.print_to_log_file(f"-pretrained_weights: loaded {tensors} inner U-Net tensors from {path}; HR head "
                                   f"and projection start fresh; lr {self.fine_tuning_lr}")
        self._apply_fine_tuning_state()

    def _apply_fine_tuning_state(self) -> None:
        state = self.my_init_kwargs.get(STATE_KEY)
        if not state or self.initial_lr == state["initial_lr"]:
            return
        self.initial_lr = float(state["initial_lr"])
        if self.was_initialized:  # the poly schedule holds its own initial lr: rebuild it, keep the momentum
            optimizer_state = self.optimizer.state_dict()
            self.optimizer, self.lr_scheduler = self.configure_optimizers()
            self.optimizer.load_state_dict(optimizer_state)
        self.print_to_log_file(f"fine-tuning from {state['pretrained_weights']}: initial lr {self.initial_lr}")

    def configure_optimizers(self):
        optimizer, lr_scheduler = super().configure_optimizers()
        self._use_fused_update(optimizer)
        return optimizer, lr_scheduler

    def _use_fused_update(self, optimizer: torch.optim.Optimizer) -> None:
        """nnU-Net's SGD (same lr, momentum, Nesterov, weight decay) with PyTorch's fused kernel where it has one.

        The fused update is one kernel over all parameters: on 2 CPU cores 4 ms instead of 15 ms (multi-tensor)
        per step of this network; GradScaler supports it on CUDA. A checkpoint's param groups carry these flags,
        so they are set again after loading one.
        """
        fused = self.device.type in ("cpu", "cuda")
        for group in optimizer.param_groups:
            group["fused"], group["foreach"] = (True, False) if fused else (None, True)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if isinstance(filename_or_checkpoint, str):
            with self._undone_if_refused():
                filename_or_checkpoint = self._readable_checkpoint(filename_or_checkpoint)
        super().load_checkpoint(filename_or_checkpoint)
        self._use_fused_update(self.optimizer)
        self._apply_fine_tuning_state()

    # --- crash safety: atomic checkpoints with SHA-256 records, the previous one kept, one training per fold ------
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written to a temporary name and renamed with its SHA-256 record (a kill never
        leaves a truncated one); the replaced ``checkpoint_latest.pth`` is kept as ``checkpoint_previous.pth`` for
        :meth:`load_checkpoint`. A failed write (a full disk) is one line; the last complete checkpoint stays."""
        partial = f"{filename}.{os.getpid()}{TEMPORARY_SUFFIX}"
        try:
            super().save_checkpoint(partial)
            if not os.path.isfile(partial):  # not rank 0, or checkpointing disabled
                return
            if os.path.basename(filename) == LATEST_CHECKPOINT:
                keep_as_previous(filename, os.path.join(os.path.dirname(filename), PREVIOUS_CHECKPOINT))
            publish_checkpoint(partial, filename)
        except (OSError, RuntimeError, RehrsegInputError) as error:
            if isinstance(error, RuntimeError) and "writ" not in str(error):
                raise  # not a failed write (torch.save reports a short one as RuntimeError "... file write failed")
            reason = error.strerror if isinstance(error, OSError) and error.strerror else "the write stopped part-way"
            folder = os.path.dirname(os.path.abspath(filename))
            fail(f"could not write {os.path.basename(filename)} in {folder} ({reason}); the last complete checkpoint "
                 f"there is kept: free disk space in {folder}, then resume with nnUNetv2_train ... --c.")
        finally:
            if os.path.exists(partial):
                os.remove(partial)

    def _checkpoint_problem(self, path: str) -> str | None:
        """Why a checkpoint must not be loaded: damaged (its SHA-256 differs from its record) or unreadable;
        None when it may (a checkpoint without a record loads unverified, said once)."""
        damage = checkpoint_damage(path, lambda line: self.print_to_log_file(line, also_print_to_console=True))
        if damage is not None:  # refused before its bytes are unpickled
            return damage
        reason = _unreadable(path)
        return f"unreadable ({reason})" if reason is not None else None

    def _readable_checkpoint(self, path: str) -> str:
        """``path`` when it verifies and loads; for a damaged or unreadable checkpoint_latest.pth the previous one
        when that does (moved over the latest, so it is never kept as a previous one; nnU-Net's load_checkpoint
        takes a file name); otherwise one line saying what to do."""
        problem = self._checkpoint_problem(path)
        if problem is None:
            return path
        previous = os.path.join(os.path.dirname(path), PREVIOUS_CHECKPOINT)
        if os.path.basename(path) == LATEST_CHECKPOINT and os.path.isfile(previous) \
                and self._checkpoint_problem(previous) is None:
            check = "verified" if recorded_hash(previous) else "unverified: it has no SHA-256 record"
            self.print_to_log_file(f"{path} is {problem}; resuming from {previous} instead ({check})",
                                   also_print_to_console=True)
            promote_checkpoint(previous, path)
            return path
        best = os.path.join(os.path.dirname(path), "checkpoint_best.pth")
        fix = (f"delete it and run again with --c to resume from {best}" if os.path.isfile(best) and path != best
               else "delete it and train the fold again without --c")
        fail(f"{path} is {problem}; {fix}.")

    def _claim_fold(self) -> None:
        """One training per output folder: a second one is refused; the lock of a dead process does not block."""
        if self.local_rank != 0:
            return
        os.makedirs(self.output_folder, exist_ok=True)
        lock = os.path.join(self.output_folder, TRAINING_LOCK)
        owner = claim_lock(lock)
        if owner:  # _undone_if_refused removes this refused run's own log
            fail(f"{self.output_folder} is being trained by {f'process {owner}' if owner > 0 else 'another process'} "
                 f"(lock {lock}); wait for it to finish or stop it before training this fold again.")
        self._owns_fold = True

    def on_train_end(self) -> None:
        super().on_train_end()
        if self.local_rank != 0:
            return
        for name in (PREVIOUS_CHECKPOINT, LATEST_CHECKPOINT, TRAINING_LOCK):  # nnU-Net removed the latest itself
            remove_checkpoint(os.path.join(self.output_folder, name))

    def _unwrapped(self) -> REHRSegUNet:
        return unwrap(self.network)

    # --- data -----------------------------------------------------------------------------------------
    def do_split(self):
        splits_file = os.path.join(self.preprocessed_dataset_folder_base, "splits_final.json")
        if self.fold != "all" and not os.path.isfile(splits_file):
            folder = self.preprocessed_dataset_folder
            cases = infer_dataset_class(folder).get_identifiers(folder)
            if len(cases) < 5:  # nnU-Net's 5-fold split would fail inside scikit-learn
                fail(f"{self.plans_manager.dataset_name} has {len(cases)} training case(s), fewer than nnU-Net's 5 "
                     f"folds; train fold 'all' (nnUNetv2_train D 3d_fullres all ...) or write {splits_file}.")
        return super().do_split()

    def _lr_deep_supervision_scales(self) -> list | None:
        return super()._get_deep_supervision_scales()

    def _get_deep_supervision_scales(self):
        return None  # the loader delivers the HR label; LR targets are derived in train_step

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        # METHOD.md: rotate about the slice axis only ("dummy 2D"), no mirroring. The parent's version is not
        # called: it would log its own (different) choice
        rotation = (-np.pi, np.pi)
        patch_size = self.configuration_manager.patch_size
        initial_patch_size = get_patch_size(patch_size[1:], rotation, (0, 0), (0, 0), (0.85, 1.25))
        initial_patch_size = [patch_size[0], *initial_patch_size]
        self.inference_allowed_mirroring_axes = None
        mirroring = f"mirroring of axes {self.training_mirror_axes}" if self.training_mirror_axes else "no mirroring"
        self.print_to_log_file(f"do_dummy_2d_data_aug: True (rotation about the slice axis only), {mirroring}")
        return rotation, True, initial_patch_size, self.training_mirror_axes

    def get_dataloaders(self):
        # nnU-Net builds its loaders by module-level name; swap ours in for the duration of the call
        original = trainer_module.nnUNetDataLoader
        trainer_module.nnUNetDataLoader = UncertaintyDataLoader
        try:
            return super().get_dataloaders()
        finally:
            trainer_module.nnUNetDataLoader = original

    def lr_targets(self, hr_target: torch.Tensor, uncertainty: torch.Tensor) -> tuple[list, list]:
        """LR labels (``lr_target_rule`` over each group of r) and pooled uncertainty, at every
        deep-supervision scale of the LR U-Net (nearest-exact downsampling, as nnU-Net's DS transform).
        Computed on the tensors' device: no per-step CPU work beyond nnU-Net's own."""
        if self.lr_target_rule == "centre":
            lr_label = centre_slice_labels(hr_target, self.scale_factor)
        else:
            lr_label = labels_to_lr_tensor(hr_target, self.scale_factor, self.label_manager.num_segmentation_heads)
        lr_uncertainty = pool_thick_slices(uncertainty, self.scale_factor)
        labels, uncertainties = [lr_label], [lr_uncertainty]
        for scale in (self._lr_deep_supervision_scales() or [])[1:]:
            size = [int(round(s * f)) for s, f in zip(lr_label.shape[2:], scale, strict=True)]
            labels.append(F.interpolate(lr_label.float(), size=size, mode="nearest-exact").to(lr_label.dtype))
            uncertainties.append(F.interpolate(lr_uncertainty, size=size, mode="area"))
        return labels, uncertainties

    # --- losses ---------------------------------------------------------------------------------------
    def _build_loss(self):
        dc_ce = {"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5, "do_bg": False,
                 "ddp": self.is_ddp}
        self.hr_loss = DC_and_CE_loss(dc_ce, {}, weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)
        if not self.use_uncertainty:
            lr_loss = DC_and_CE_loss(dc_ce, {}, weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)
        elif self.lr_dice_with_uncertainty:
            lr_loss = UncertaintyWeightedCEAndDice(MemoryEfficientSoftDiceLoss(
                apply_nonlin=softmax_helper_dim1, batch_dice=dc_ce["batch_dice"], do_bg=False, smooth=1e-5,
                ddp=self.is_ddp))
        else:
            lr_loss = UncertaintyWeightedCE()
        scales = self._lr_deep_supervision_scales()
        if self.enable_deep_supervision and scales:
            weights = np.array([1 / (2 ** i) for i in range(len(scales))])
            weights[-1] = 1e-6 if self.is_ddp and not self._do_i_compile() else 0
            lr_loss = DeepSupervisionWrapper(lr_loss, weights / weights.sum())
        return lr_loss

    def compute_losses(self, output: dict, hr_target: torch.Tensor, lr_labels: list, lr_uncertainty: list,
                       teacher_features: torch.Tensor | None) -> dict[str, torch.Tensor]:
        lr_logits = output["lr"]
        if not isinstance(lr_logits, (list, tuple)):
            lr_logits, lr_labels, lr_uncertainty = [lr_logits], lr_labels[:1], lr_uncertainty[:1]
        unwrap = isinstance(self.loss, DeepSupervisionWrapper)
        args = (lr_logits, lr_labels) + ((lr_uncertainty,) if self.use_uncertainty else ())
        losses = {"lr": self.loss(*args) if unwrap else self.loss(*[a[0] for a in args])}
        if self.use_hr_head:
            losses["hr"] = self.hr_loss(output["hr"], hr_target)
        if teacher_features is not None:
            student = output["features"]
            teacher = match_grid(teacher_features.to(student.dtype), student)
            losses["structural"] = structural_distillation(student, teacher)
            losses["cosine"] = cosine_distillation(self._unwrapped().projection(student), teacher)
        return losses

    def train_step(self, batch: dict) -> dict:
        # record_function regions name the step's parts for torch.profiler (benchmarks/trainer_speed.py);
        # they cost nothing while no profiler runs
        with record_function("rehrseg.targets"):
            data = batch["data"].to(self.device, non_blocking=True)
            hr_target = batch["target"].to(self.device, non_blocking=True)
            uncertainty = batch["uncertainty"].to(self.device, non_blocking=True)
            lr_labels, lr_uncertainty = self.lr_targets(hr_target, uncertainty)
        teacher_features = None
        if self.teacher is not None:
            with record_function("rehrseg.teacher"), self._autocast():
                teacher_features = self.teacher(pool_thick_slices(data, self.scale_factor), lr_labels[0])
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            with record_function("rehrseg.network_forward"):
                output = self.network(data)
            with record_function("rehrseg.losses"):
                losses = self.compute_losses(output, hr_target, lr_labels, lr_uncertainty, teacher_features)
                loss = sum(losses.values())
        with record_function("rehrseg.backward"):
            (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()
        with record_function("rehrseg.optimizer"):
            if self.grad_scaler is not None:
                self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12, foreach=True)
            if self.grad_scaler is not None:
                self.grad_scaler.step(self.optimizer)
                self.grad_scaler.update()
            else:
                self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}

    def _autocast(self):
        """Mixed precision on CUDA as nnU-Net's own step; nothing elsewhere."""
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def validation_step(self, batch: dict) -> dict:
        """In eval mode the network gives HR logits: HR loss and pseudo Dice against the pseudo-HR label."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        with self._autocast():
            output = self.network(data)
            loss = self.hr_loss(output, target)
        prediction = torch.zeros(output.shape, device=output.device, dtype=torch.float16)
        prediction.scatter_(1, output.argmax(1)[:, None], 1)
        tp, fp, fn, _ = get_tp_fp_fn_tn(prediction, target, axes=[0] + list(range(2, output.ndim)))
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": tp.detach().cpu().numpy()[1:],
                "fp_hard": fp.detach().cpu().numpy()[1:], "fn_hard": fn.detach().cpu().numpy()[1:]}
