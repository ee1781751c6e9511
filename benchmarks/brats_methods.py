"""The methods that benchmarks/brats_4x.py compares: how each one trains, predicts and reaches the HR grid.

The runner (brats_4x.py) owns splits, resuming, timing and scoring; this module only says what a method is.
A new method is one entry of :data:`METHODS` (a new REHRSeg variant: one line of :data:`REHRSEG_TRAINERS`).

Schedules, with E1 = ``--lr-epochs`` and E2 = ``--finetune-epochs`` (METHOD.md: REHRSeg is fine-tuned from
the converged LR nnU-Net, so every method spends E1 + E2 epochs in all):
- ``full``: E1 + E2 epochs from scratch;
- ``lr_init``: E1 epochs (the LR nnU-Net that REHRSeg starts from; not scored itself);
- ``fine_tune``: E2 epochs, initialised from the ``lr_init`` model's final checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

#: dataset key -> (nnU-Net dataset id, name); the pseudo-HR dataset is named by rehrseg_make_pseudohr
DATASETS = {"lr": (911, "BratsLR4x"), "interp": (912, "BratsInterp4x"), "hr": (914, "BratsHR")}
PSEUDOHR_ID = 913
#: the pseudo-HR dataset with label-free training images: its ``imagesTr`` super-resolved without the LR label as SR
#: input (``rehrseg_super_resolve``, as the test images are), its labels those of the pseudo-HR dataset
LABEL_FREE_ID = 915
LABEL_FREE_NAME = "BratsPseudoHRLabelFree"
BENCH_PLANS = "BenchPlans"
INIT_PLANS = "BenchPlansInit"  # the same plans under a second name: the E1-epoch LR model gets its own folder
REHRSEG_PLANS = "REHRSegPlans"
LR_INIT = "nnunet_lr_init"
SCHEDULES = ("full", "lr_init", "fine_tune")


@dataclass(frozen=True)
class Method:
    """How one result key is obtained.

    Args:
        trainer: the nnU-Net trainer class.
        dataset: the key of the dataset it trains on (``lr``, ``interp``, ``hr`` or ``pseudohr``).
        inputs: the key of the dataset whose ``imagesTs`` it predicts.
        schedule: one of :data:`SCHEDULES`.
        predictor: the prediction console script.
        plans: the plans identifier it trains with.
        to_hr: how its prediction reaches the 1 mm grid: None (predicted there), ``nearest`` or ``shape_based``
            (an LR-grid prediction upsampled along the slice axis).
        model: the name of the trained model whose predictions it scores, when several keys share one model
            (None: a model of its own, named by the key).
        scored: False for a model that only serves others (the LR initialisation).
        super_resolve: its test images are the thick-slice ones, super-resolved by the split's SR model
            (``rehrseg_super_resolve``) as the first step of its prediction, so that its prediction time includes
            the super-resolution, as the guided REHRSeg designs' does.
        save_probabilities: its prediction also writes the HR class probabilities (an ensemble member).
    """

    trainer: str
    dataset: str
    inputs: str
    schedule: str = "full"
    predictor: str = "nnUNetv2_predict"
    plans: str = BENCH_PLANS
    to_hr: str | None = None
    model: str | None = None
    scored: bool = True
    super_resolve: bool = False
    save_probabilities: bool = False

    def model_name(self, key: str) -> str:
        return self.model or key


#: REHRSeg, its designs and its ablations (result key -> trainer), each fine-tuned from the same LR nnU-Net
REHRSEG_TRAINERS = {
    "rehrseg": "REHRSegTrainer",  # the default design of -tr REHRSegTrainer
    # the paper's network and the two designs of the SR-guided HR branch (DESIGN.md, "HR guidance")
    "rehrseg_paper": "REHRSegTrainer_paper", "rehrseg_hrStem": "REHRSegTrainer_hrStem",
    "rehrseg_hrLevel": "REHRSegTrainer_hrLevel",
    "rehrseg_noUASR": "REHRSegTrainer_noUASR",
    "rehrseg_noDistill": "REHRSegTrainer_noDistill", "rehrseg_noHRHead": "REHRSegTrainer_noHRHead",
    # issue 14's per-class questions: a Dice term in the LR loss, mirroring, all patches on foreground
    "rehrseg_lrDice": "REHRSegTrainer_lrDice", "rehrseg_mirror": "REHRSegTrainer_mirror",
    "rehrseg_fgOversample": "REHRSegTrainer_fgOversample",
    "rehrseg_lrCentre": "REHRSegTrainer_lrCentre",  # LR target: the centre slice of each group, not the majority
    "rehrseg_fineTuneLr1en2": "REHRSegTrainer_fineTuneLr1en2",  # fine-tuning at nnU-Net's lr 1e-2, not 1e-3
}

#: ensemble result key -> the result keys whose HR class probabilities it averages (trains nothing; its prediction
#: time is the sum of its members')
ENSEMBLES: dict[str, tuple[str, ...]] = {
    "ensemble_rehrseg_paper_sr_nnunet": ("rehrseg_paper", "sr_nnunet"),
    "ensemble_rehrseg_hrStem_sr_nnunet": ("rehrseg_hrStem", "sr_nnunet"),
}
ENSEMBLE_MEMBERS = {key for members in ENSEMBLES.values() for key in members}

#: result key -> method; the order is the training order: the rows that decide between the paths first (REHRSeg
#: from its LR start, then SR + stock nnU-Net, the members of the ensembles), the LR and interpolation baselines and
#: the oracle after them, so that a run cut short has the deciding rows scored
METHODS: dict[str, Method] = {
    LR_INIT: Method("nnUNetTrainer", "lr", "lr", schedule="lr_init", plans=INIT_PLANS, scored=False),
    **{key: Method(trainer, "pseudohr", "lr", schedule="fine_tune", predictor="rehrseg_predict",
                   plans=REHRSEG_PLANS, save_probabilities=key in ENSEMBLE_MEMBERS)
       for key, trainer in REHRSEG_TRAINERS.items()},
    # the thick-slice test image super-resolved by the split's SR model, then stock nnU-Net ("SR + stock nnU-Net")
    "sr_nnunet": Method("nnUNetTrainer", "pseudohr", "lr", super_resolve=True, save_probabilities=True),
    # the same, trained on pseudo-HR images super-resolved without the LR label, as its test images are
    "sr_nnunet_labelFree": Method("nnUNetTrainer", "pseudohr_labelFree", "lr", super_resolve=True),
    "nnunet_lr_upsampled_nearest": Method("nnUNetTrainer", "lr", "lr", to_hr="nearest", model="nnunet_lr"),
    "nnunet_lr_upsampled_sdf": Method("nnUNetTrainer", "lr", "lr", to_hr="shape_based", model="nnunet_lr"),
    "interp_nnunet": Method("nnUNetTrainer", "interp", "interp"),
    "oracle_hr": Method("nnUNetTrainer", "hr", "hr"),  # the true 1 mm images and labels: the ceiling
}

SCORED_KEYS = [key for key, method in METHODS.items() if method.scored] + list(ENSEMBLES)

#: the key of the design ``-tr REHRSegTrainer`` trains, per value of REHRSegTrainer.hr_guidance
DESIGN_KEYS = {"none": "rehrseg_paper", "stem": "rehrseg_hrStem", "level": "rehrseg_hrLevel"}


def recommended_key() -> str:
    """The result key of the REHRSeg variant that ``-tr REHRSegTrainer`` trains."""
    from rehrseg_nnunet.training.trainer import REHRSegTrainer
    return DESIGN_KEYS[REHRSegTrainer.hr_guidance]


def needs_super_resolution(keys: list[str]) -> bool:
    """Whether any of the result ``keys`` (ensembles: their members) uses the split's SR model: trains on a
    pseudo-HR dataset (REHRSeg, SR + stock nnU-Net) or super-resolves its test images. The baselines on the LR,
    interpolated and true HR data do not, so a part of a fold with only those skips SR training."""
    members = [member for key in keys for member in ENSEMBLES.get(key, (key,))]
    return any(METHODS[key].dataset.startswith("pseudohr") or METHODS[key].super_resolve for key in members)


def models_needed(keys: list[str]) -> list[str]:
    """The names of the models to train for the result ``keys`` (in training order): their own, plus the LR
    nnU-Net that a fine-tuned method starts from."""
    keys = [member for key in keys for member in ENSEMBLES.get(key, (key,))]
    wanted = {METHODS[key].model_name(key) for key in keys}
    if any(METHODS[key].schedule == "fine_tune" for key in keys):
        wanted.add(LR_INIT)
    ordered = []
    for key, method in METHODS.items():
        name = method.model_name(key)
        if name in wanted and name not in ordered:
            ordered.append(name)
    return ordered


def method_of_model(name: str) -> tuple[str, Method]:
    """The first (key, method) that trains the model ``name``."""
    return next((key, method) for key, method in METHODS.items() if method.model_name(key) == name)
