"""REHRSeg fine-tuned from the LR nnU-Net, as an nnU-Net user runs it, through the console scripts.

rehrseg_plan --lr_plans (the LR model's plans) -> nnUNetv2_train -pretrained_weights=LR/checkpoint -> --c keeps
the fine-tuning rate; a topology mismatch is one line; --val and rehrseg_predict work with the SR model folder
gone; rehrseg_predict -m equals -d/-tr/-p; fold 0 of a 2-case dataset is one line. The LR "model" is a stock
nnU-Net checkpoint of the LR plans' network (random weights: what is tested is that each tensor arrives).
"""

import json
import os
import re
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import (
    assert_ok,
    assert_one_line_error,
    copy_pseudohr,
    phantom_workspace,
    run_script,
    tree_digest,
)

pytestmark = pytest.mark.slow

TRAINER = "REHRSegTrainer_debug"



def logged_learning_rates(log_text: str) -> list[float]:
    return [float(v) for v in re.findall(r"Current learning rate: ([0-9.e-]+)", log_text)]


def training_log(model_folder) -> str:
    logs = sorted((model_folder / "fold_all").glob("training_log_*.txt"))
    return "\n".join(p.read_text() for p in logs)


def stock_lr_checkpoint(env: dict, results, dataset: str = "Dataset502_Phantom") -> str:
    """A stock nnU-Net model folder for the LR dataset: plans.json, dataset.json, fold_all/checkpoint_final.pth."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    preprocessed = os.path.join(env["nnUNet_preprocessed"], dataset)
    folder = results / dataset / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_all").mkdir(parents=True)
    shutil.copy(os.path.join(preprocessed, "nnUNetPlans.json"), folder / "plans.json")
    shutil.copy(os.path.join(preprocessed, "dataset.json"), folder / "dataset.json")
    manager = PlansManager(str(folder / "plans.json"))
    config = manager.get_configuration("3d_fullres")
    torch.manual_seed(0)
    network = nnUNetTrainer.build_network_architecture(manager, config, 2, 3, True)
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}}, folder / "fold_all" / "checkpoint_final.pth")
    return str(folder / "fold_all" / "checkpoint_final.pth")


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory, trained_sr_model, pseudohr_template):
    root = tmp_path_factory.mktemp("fine_tuning")
    workspace = phantom_workspace(root, trained_sr_model)
    results, sr_model, env, train_env = (workspace[k] for k in ("results", "sr_model", "env", "train_env"))
    # made, both datasets planned and preprocessed, and plans of REHRSeg's own topology (conftest's
    # PHANTOM_PLAN_FLAGS): fine-tuning from the LR checkpoint must refuse them
    copy_pseudohr(pseudohr_template, workspace, "616")
    checkpoint = stock_lr_checkpoint(env, results)
    out = {"root": root, "env": env, "train_env": train_env, "checkpoint": checkpoint, "sr_model": sr_model,
           "model": results / "Dataset616_PhantomPseudoHR" / f"{TRAINER}__REHRSegPlans__3d_fullres"}
    out["mismatch"] = run_script("nnUNetv2_train", ["616", "3d_fullres", "all", "-tr", TRAINER, "-p", "REHRSegPlans",
                                                    "-device", "cpu", "-pretrained_weights", checkpoint], train_env)
    shutil.rmtree(out["model"], ignore_errors=True)
    lr_plans = os.path.join(os.path.dirname(os.path.dirname(checkpoint)), "plans.json")
    out["replan"] = run_script("rehrseg_plan", ["-d", "616", "--lr_plans", lr_plans, "-np", "1"], env)
    assert_ok(out["replan"])
    # the '=' spelling, which nnU-Net's argparse accepts
    out["train"] = run_script("nnUNetv2_train", ["616", "3d_fullres", "all", "-tr", TRAINER, "-p", "REHRSegPlans",
                                                 "-device", "cpu", f"-pretrained_weights={checkpoint}"], train_env)
    assert_ok(out["train"])
    out["log"] = training_log(out["model"])
    return out


@pytest.mark.bad_input
def test_topology_mismatch_is_one_line_naming_the_plans_to_use(fine_tuned):
    assert_one_line_error(fine_tuned["mismatch"], fine_tuned["checkpoint"], "rehrseg_plan", "--lr_plans")


def test_replanning_says_what_it_replaced(fine_tuned):
    assert "replaced the existing" in fine_tuned["replan"].stdout
    assert "patch_size [16, 32, 32] ->" in fine_tuned["replan"].stdout  # PHANTOM_PLAN_FLAGS' patch


def test_every_lr_tensor_is_loaded_and_the_rate_is_the_fine_tuning_one(fine_tuned):
    from rehrseg_nnunet.training.fine_tuning import inner_unet_keys

    stock = torch.load(fine_tuned["checkpoint"], weights_only=False)["network_weights"]
    tuned = torch.load(fine_tuned["model"] / "fold_all" / "checkpoint_final.pth", weights_only=False)
    inner = inner_unet_keys(tuned["network_weights"])
    assert set(inner) == set(inner_unet_keys(stock))  # the same U-Net, tensor for tensor
    assert f"loaded {len(inner)} inner U-Net tensors" in fine_tuned["log"]
    assert logged_learning_rates(fine_tuned["log"])[0] == 0.001
    assert tuned["init_args"]["rehrseg_fine_tuning"]["initial_lr"] == 0.001


@pytest.mark.bad_input
def test_continue_keeps_the_fine_tuning_rate(fine_tuned):
    """An interruption after epoch 0 (what checkpoint_latest holds then), continued with --c."""
    fold = fine_tuned["model"] / "fold_all"
    uninterrupted = logged_learning_rates(fine_tuned["log"])
    state = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    state["current_epoch"] = 1
    assert all(group["fused"] for group in state["optimizer_state"]["param_groups"])  # the fused SGD update
    for group in state["optimizer_state"]["param_groups"]:  # as a checkpoint of a trainer without it holds them
        group["fused"], group["foreach"] = None, None
    torch.save(state, fold / "checkpoint_latest.pth")
    os.rename(fold / "checkpoint_final.pth", fold / "checkpoint_final_uninterrupted.pth")
    os.rename(fold / "checkpoint_final.pth.sha256", fold / "checkpoint_final_uninterrupted.pth.sha256")
    for log in fold.glob("training_log_*.txt"):
        log.unlink()
    result = run_script("nnUNetv2_train", ["616", "3d_fullres", "all", "-tr", TRAINER, "-p", "REHRSegPlans",
                                           "-device", "cpu", "--c"], fine_tuned["train_env"])
    assert_ok(result)
    continued = logged_learning_rates(training_log(fine_tuned["model"]))
    assert continued == uninterrupted[1:] and continued[0] < 0.001  # epoch 1 of a 1e-3 poly schedule, not 1e-2's
    groups = torch.load(fold / "checkpoint_final.pth", weights_only=False)["optimizer_state"]["param_groups"]
    assert all(group["fused"] and not group["foreach"] for group in groups)  # set again after loading
    os.replace(fold / "checkpoint_final_uninterrupted.pth", fold / "checkpoint_final.pth")
    os.replace(fold / "checkpoint_final_uninterrupted.pth.sha256", fold / "checkpoint_final.pth.sha256")  # its record


def test_validation_prediction_and_export_work_without_the_sr_model(fine_tuned):
    env = fine_tuned["train_env"]
    dataset_json = json.loads((fine_tuned["root"] / "raw" / "Dataset616_PhantomPseudoHR" / "dataset.json").read_text())
    assert dataset_json["rehrseg"]["sr_model_folder"] == os.path.join("Dataset502_Phantom", "rehrseg_sr")
    hidden = fine_tuned["sr_model"].with_name("rehrseg_sr_elsewhere")
    os.rename(fine_tuned["sr_model"], hidden)
    try:
        assert_ok(run_script("nnUNetv2_train", ["616", "3d_fullres", "all", "-tr", TRAINER, "-p", "REHRSegPlans",
                                                "-device", "cpu", "--val"], env))
        inputs = fine_tuned["root"] / "raw" / "Dataset502_Phantom" / "imagesTr"
        common = ["-i", str(inputs), "-f", "all", "-device", "cpu", "-npp", "1", "-nps", "1"]
        by_name = fine_tuned["root"] / "pred_by_name"
        by_folder = fine_tuned["root"] / "pred_by_folder"
        assert_ok(run_script("rehrseg_predict", [*common, "-o", str(by_name), "-d", "616", "-tr", TRAINER], env))
        assert_ok(run_script("rehrseg_predict", [*common, "-o", str(by_folder), "-m", str(fine_tuned["model"])], env))
        # exported to a zip and installed into another results folder, as a collaborator would
        archive = fine_tuned["root"] / "model.zip"
        assert_ok(run_script("nnUNetv2_export_model_to_zip", ["-d", "616", "-o", str(archive), "-c", "3d_fullres",
                                                              "-tr", TRAINER, "-p", "REHRSegPlans", "-f", "all"], env))
        installed = {**env, "nnUNet_results": str(fine_tuned["root"] / "installed_results")}
        assert_ok(run_script("nnUNetv2_install_pretrained_model_from_zip", [str(archive)], installed))
        by_install = fine_tuned["root"] / "pred_installed"
        assert_ok(run_script("rehrseg_predict", [*common, "-o", str(by_install), "-d", "616", "-tr", TRAINER],
                             installed))
        assert_ok(run_script("nnUNetv2_train", ["616", "3d_fullres", "all", "-tr", TRAINER, "-p", "REHRSegPlans",
                                                "-device", "cpu", "--val"], installed))
    finally:
        os.rename(hidden, fine_tuned["sr_model"])
    for case in ("case000", "case001"):
        a = sitk.ReadImage(str(by_name / f"{case}.nii.gz"))
        b = sitk.ReadImage(str(by_folder / f"{case}.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(a),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(by_install / f"{case}.nii.gz"))))
        assert a.GetSize()[2] == 4 * sitk.ReadImage(str(inputs / f"{case}_0000.nii.gz")).GetSize()[2]
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()


def results_tree(folder) -> tuple[dict, list]:
    """Every file's SHA-256 and every folder below ``folder``: a refused start must leave both as they were."""
    return tree_digest(folder), sorted(os.path.relpath(root, folder) for root, _, _ in os.walk(folder))


@pytest.mark.bad_input
def test_fold_0_of_two_cases_is_one_line_and_leaves_the_results_as_they_were(fine_tuned):
    results = fine_tuned["train_env"]["nnUNet_results"]
    before = results_tree(results)
    result = run_script("nnUNetv2_train", ["616", "3d_fullres", "0", "-tr", TRAINER, "-p", "REHRSegPlans",
                                           "-device", "cpu"], fine_tuned["train_env"])
    assert_one_line_error(result, "2 training case(s)", "fold 'all'")
    assert results_tree(results) == before  # no fold_0 folder, log, debug.json or lock left behind


@pytest.mark.bad_input
def test_a_start_that_fails_on_missing_uncertainty_maps_leaves_the_results_as_they_were(fine_tuned):
    """A trainer folder that did not exist is gone again, with its fold, log, debug.json, plans and lock."""
    from rehrseg_nnunet.planning import uncertainty_folder_of
    results = fine_tuned["train_env"]["nnUNet_results"]
    preprocessed = fine_tuned["root"] / "preprocessed" / "Dataset616_PhantomPseudoHR"
    plans = json.loads((preprocessed / "REHRSegPlans.json").read_text())
    maps = uncertainty_folder_of(str(preprocessed / plans["configurations"]["3d_fullres"]["data_identifier"]))
    assert os.path.isdir(maps)
    before = results_tree(results)
    os.rename(maps, maps + "_hidden")
    try:
        result = run_script("nnUNetv2_train", ["616", "3d_fullres", "all", "-tr", "REHRSegTrainer_cpuSmoke",
                                               "-p", "REHRSegPlans", "-device", "cpu"], fine_tuned["train_env"])
    finally:
        os.rename(maps + "_hidden", maps)
    assert result.returncode != 0
    assert "rehrseg_plan" in result.stdout + result.stderr  # says what to run
    assert results_tree(results) == before
    assert not os.path.exists(os.path.join(results, "Dataset616_PhantomPseudoHR",
                                           "REHRSegTrainer_cpuSmoke__REHRSegPlans__3d_fullres"))


def test_short_schedules_write_a_checkpoint_every_epoch(fine_tuned, monkeypatch):
    """So that --c after an interruption continues from the last epoch, never from checkpoint_best."""
    from rehrseg_nnunet.training.trainer import REHRSegTrainer
    from rehrseg_nnunet.training.variants import REHRSegTrainer_cpu, REHRSegTrainer_debug

    for key, value in fine_tuned["env"].items():
        monkeypatch.setenv(key, value)
    preprocessed = fine_tuned["root"] / "preprocessed" / "Dataset616_PhantomPseudoHR"
    plans = json.loads((preprocessed / "REHRSegPlans.json").read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    every = {}
    for trainer in (REHRSegTrainer, REHRSegTrainer_debug, REHRSegTrainer_cpu):
        # nnU-Net 2.8.1's trainer pops this flag from the plans (nnUNetv2_train sets it)
        instance = trainer({**plans, "continue_training": False}, "3d_fullres", "all", dataset_json,
                           torch.device("cpu"))
        every[trainer.__name__] = instance.save_every
    assert every == {"REHRSegTrainer": 50, "REHRSegTrainer_debug": 1, "REHRSegTrainer_cpu": 1}


def test_ablation_variants_change_only_their_setting(fine_tuned, monkeypatch):
    """lrDice: UASR CE + soft Dice on the LR targets; mirror: in-plane mirroring in training only;
    fgOversample: every patch on foreground; lrCentre: the LR target is each group's centre slice."""
    from rehrseg_nnunet.losses import UncertaintyWeightedCE, UncertaintyWeightedCEAndDice
    from rehrseg_nnunet.training.trainer import REHRSegTrainer
    from rehrseg_nnunet.training.variants import (
        REHRSegTrainer_fgOversample,
        REHRSegTrainer_lrCentre,
        REHRSegTrainer_lrDice,
        REHRSegTrainer_mirror,
    )

    for key, value in fine_tuned["env"].items():
        monkeypatch.setenv(key, value)
    preprocessed = fine_tuned["root"] / "preprocessed" / "Dataset616_PhantomPseudoHR"
    plans = json.loads((preprocessed / "REHRSegPlans.json").read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    trainers = {trainer.__name__: trainer({**plans, "continue_training": False}, "3d_fullres", "all", dataset_json,
                                          torch.device("cpu"))
                for trainer in (REHRSegTrainer, REHRSegTrainer_lrDice, REHRSegTrainer_mirror,
                                REHRSegTrainer_fgOversample, REHRSegTrainer_lrCentre)}

    def lr_loss(trainer):
        loss = trainer._build_loss()
        return getattr(loss, "loss", loss)  # inside nnU-Net's deep-supervision wrapper

    assert type(lr_loss(trainers["REHRSegTrainer"])) is UncertaintyWeightedCE
    assert type(lr_loss(trainers["REHRSegTrainer_lrDice"])) is UncertaintyWeightedCEAndDice
    mirror = {name: t.configure_rotation_dummyDA_mirroring_and_inital_patch_size()[3] for name, t in trainers.items()}
    assert mirror["REHRSegTrainer_mirror"] == (1, 2) and mirror["REHRSegTrainer"] is None
    assert trainers["REHRSegTrainer_mirror"].inference_allowed_mirroring_axes is None
    oversample = {name: t.oversample_foreground_percent for name, t in trainers.items()}
    assert oversample["REHRSegTrainer_fgOversample"] == 1.0 and oversample["REHRSegTrainer"] == 0.33
    r = trainers["REHRSegTrainer"].scale_factor
    assert r >= 3  # with r = 2 every tie goes to the centre slice and the two rules agree
    group = [1] * r
    group[r // 2] = 0  # the centre slice is outvoted
    hr_target = torch.tensor(group * 2, dtype=torch.int16).view(1, 1, 2 * r, 1, 1).expand(1, 1, 2 * r, 4, 4)
    uncertainty = torch.zeros(hr_target.shape)
    lr_label = {name: t.lr_targets(hr_target, uncertainty)[0][0] for name, t in trainers.items()
                if name in ("REHRSegTrainer", "REHRSegTrainer_lrCentre")}
    assert lr_label["REHRSegTrainer"].unique().tolist() == [1]  # the majority of each group of r
    assert lr_label["REHRSegTrainer_lrCentre"].unique().tolist() == [0]  # slice r // 2 of each group


def test_fine_tuning_rate_variant_starts_at_its_own_rate_and_a_bad_target_rule_is_one_line(fine_tuned, monkeypatch,
                                                                                           capsys):
    """fineTuneLr1en2: the schedule that -pretrained_weights starts begins at 1e-2 (the default's at 1e-3, as
    the nnUNetv2_train test above shows); a subclass with an unknown LR-target rule stops in its constructor."""
    from rehrseg_nnunet.training.fine_tuning import LOADED_ATTRIBUTE, STATE_KEY
    from rehrseg_nnunet.training.trainer import REHRSegTrainer
    from rehrseg_nnunet.training.variants import REHRSegTrainer_fineTuneLr1en2

    for key, value in fine_tuned["env"].items():
        monkeypatch.setenv(key, value)
    preprocessed = fine_tuned["root"] / "preprocessed" / "Dataset616_PhantomPseudoHR"
    plans = json.loads((preprocessed / "REHRSegPlans.json").read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    trainer = REHRSegTrainer_fineTuneLr1en2({**plans, "continue_training": False}, "3d_fullres", "all", dataset_json,
                                            torch.device("cpu"))
    trainer.initialize()
    assert trainer.optimizer.param_groups[0]["lr"] == 0.01  # nnU-Net's default before any weights load
    setattr(trainer._unwrapped(), LOADED_ATTRIBUTE, (str(fine_tuned["checkpoint"]), 1))
    trainer._start_fine_tuning_if_pretrained()
    assert trainer.initial_lr == 0.01 and trainer.optimizer.param_groups[0]["lr"] == 0.01
    assert trainer.my_init_kwargs[STATE_KEY]["initial_lr"] == 0.01

    class REHRSegTrainer_typo(REHRSegTrainer):
        lr_target_rule = "center"

    with pytest.raises(SystemExit):
        REHRSegTrainer_typo({**plans, "continue_training": False}, "3d_fullres", "all", dataset_json,
                            torch.device("cpu"))
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "lr_target_rule is 'center'" in error and "'centre'" in error


def test_rehrseg_predict_help_shows_rehrseg_defaults_and_no_inert_option():
    result = run_script("rehrseg_predict", ["-h"], {})
    assert_ok(result)
    text = result.stdout
    assert "default REHRSegTrainer" in text and "default REHRSegPlans" in text and "-m MODEL_FOLDER" in text
    for inert in ("--disable_tta", "-prev_stage_predictions"):
        assert inert not in text
    assert "rounded to a multiple of r" in text


def test_resized_plans_build_a_working_unet_of_the_asked_size(fine_tuned):
    """The quick start's CPU plans for the thick-slice nnU-Net: nnU-Net's topology rule for the given patch."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from rehrseg_nnunet.resized_plans import write_resized_plans

    folder = os.path.join(fine_tuned["env"]["nnUNet_preprocessed"], "Dataset502_Phantom")
    path = write_resized_plans(folder, [4, 32, 32], base_features=8, max_features=24, batch_size=3,
                               plans_name="nnUNetPlansTiny")
    assert path == os.path.join(folder, "nnUNetPlansTiny.json")
    manager = PlansManager(path)
    assert manager.plans_name == "nnUNetPlansTiny" and manager.available_configurations == ["3d_fullres"]
    config = manager.get_configuration("3d_fullres")
    stock = PlansManager(os.path.join(folder, "nnUNetPlans.json")).get_configuration("3d_fullres")
    assert config.batch_size == 3 and config.data_identifier == stock.data_identifier
    arch = config.network_arch_init_kwargs
    assert arch["features_per_stage"][0] == 8 and max(arch["features_per_stage"]) <= 24
    assert len(arch["strides"]) == arch["n_stages"] == len(arch["features_per_stage"])
    network = nnUNetTrainer.build_network_architecture(manager, config, 1, 3, False)
    with torch.no_grad():
        logits = network(torch.zeros(1, 1, *config.patch_size))
    assert tuple(logits.shape) == (1, 3, *config.patch_size)


def test_resized_plans_without_the_mask_normalisation_get_their_own_data(fine_tuned):
    from rehrseg_nnunet.resized_plans import resized_plans

    folder = os.path.join(fine_tuned["env"]["nnUNet_preprocessed"], "Dataset502_Phantom")
    with open(os.path.join(folder, "nnUNetPlans.json")) as handle:
        plans = json.load(handle)
    plans["configurations"]["3d_fullres"]["use_mask_for_norm"] = [True]
    kept = resized_plans(plans, [4, 32, 32], 8, 24, 2, "P", use_mask_for_norm=None)["configurations"]["3d_fullres"]
    assert kept["use_mask_for_norm"] == [True]
    assert kept["data_identifier"] == plans["configurations"]["3d_fullres"]["data_identifier"]
    off = resized_plans(plans, [4, 32, 32], 8, 24, 2, "P", use_mask_for_norm=False)["configurations"]["3d_fullres"]
    assert off["use_mask_for_norm"] == [False] and off["data_identifier"] == "P_3d_fullres"


def test_short_schedules_redraw_progress_every_few_epochs_and_after_the_last():
    """nnU-Net redraws progress.png after every epoch (about 1 s on 2 CPU cores); short schedules every
    ``plot_every`` epochs and after the last, and leave the logger as it was."""
    from rehrseg_nnunet.training.variants import ShortSchedule

    class Logger:
        def __init__(self):
            self.drawn = []

        def plot_progress_png(self, output_folder):
            self.drawn.append(output_folder)

    class StockEpochEnd:  # what nnUNetTrainer.on_epoch_end does with the logger and the epoch counter
        def on_epoch_end(self):
            self.logger.plot_progress_png(f"epoch {self.current_epoch}")
            self.current_epoch += 1

    class Schedule(ShortSchedule, StockEpochEnd):
        pass

    for num_epochs, expected in ((8, ["epoch 3", "epoch 7"]), (6, ["epoch 3", "epoch 5"]), (2, ["epoch 1"])):
        trainer = object.__new__(Schedule)  # no nnU-Net set-up: only the epoch-end logic is under test
        trainer.logger, trainer.current_epoch, trainer.num_epochs = Logger(), 0, num_epochs
        for _ in range(num_epochs):
            trainer.on_epoch_end()
        assert trainer.logger.drawn == expected
        assert "plot_progress_png" not in vars(trainer.logger)
