"""The hand-run benchmarks stay runnable: each script's ``-h`` works, and brats_4x finds every trainer it names.

The benchmarks themselves take hours and are not run here; these checks catch the breaks a refactor causes
(a moved import, a renamed trainer) before someone starts a long run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(path for path in BENCHMARKS.glob("*.py") if "__main__" in path.read_text())  # not the modules


def test_there_are_benchmark_scripts():
    assert "brats_4x.py" in {script.name for script in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_benchmark_help_works(script: Path):
    result = subprocess.run([sys.executable, str(script), "-h"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


def load_brats_4x():
    spec = importlib.util.spec_from_file_location("brats_4x_benchmark", BENCHMARKS / "brats_4x.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_brats_4x_finds_every_trainer_it_trains():
    brats_4x = load_brats_4x()
    for name in {method.trainer for method in brats_4x.METHODS.values()}:
        assert brats_4x.trainer_class_named(name).__name__ == name


def test_brats_4x_trains_only_what_the_asked_result_keys_need():
    load_brats_4x()  # puts benchmarks/ on sys.path
    from brats_methods import METHODS, REHRSEG_TRAINERS, SCORED_KEYS, models_needed
    assert set(REHRSEG_TRAINERS) <= set(SCORED_KEYS) and "nnunet_lr_init" not in SCORED_KEYS
    assert models_needed(["rehrseg_lrCentre"]) == ["nnunet_lr_init", "rehrseg_lrCentre"]
    assert models_needed(["oracle_hr", "nnunet_lr_upsampled_sdf"]) == ["nnunet_lr", "oracle_hr"]
    assert {METHODS[k].model_name(k) for k in ("nnunet_lr_upsampled_nearest", "nnunet_lr_upsampled_sdf")} == {
        "nnunet_lr"}


def test_a_part_without_an_lr_model_writes_no_lr_plans():
    """A fold's part with only HR-grid methods (session 16: sr_nnunet_labelFree and interp_nnunet) has no
    preprocessed LR dataset, so asking for its plans stopped the run."""
    brats_4x = load_brats_4x()
    lr, interp = brats_4x.dataset_name("lr"), brats_4x.dataset_name("interp")
    label_free, pseudohr = brats_4x.LABEL_FREE_DATASET, "Dataset913_PseudoHR"
    assert brats_4x.bench_plans_of([interp, label_free], pseudohr) == [(interp, "BenchPlans"),
                                                                     (label_free, "BenchPlans")]
    assert brats_4x.bench_plans_of([lr, pseudohr], pseudohr) == [(lr, "BenchPlans"), (lr, "BenchPlansInit"),
                                                                 (pseudohr, "BenchPlans")]


def test_a_part_with_only_baselines_skips_sr_training_and_names_the_pseudohr_dataset_it_did_not_make(tmp_path):
    """interp_nnunet and the thick-slice nnU-Net use no SR model: a part of a fold with only those (session 19's
    pat0002 rest) must not spend 15-30 CPU minutes training one."""
    brats_4x = load_brats_4x()
    from brats_methods import needs_super_resolution
    assert not needs_super_resolution(["interp_nnunet", "nnunet_lr_upsampled_sdf", "oracle_hr"])
    for key in ("sr_nnunet", "sr_nnunet_labelFree", "rehrseg_paper", "ensemble_rehrseg_paper_sr_nnunet"):
        assert needs_super_resolution(["interp_nnunet", key]), key
    assert brats_4x.pseudohr_dataset(str(tmp_path)) == "Dataset913_BratsLR4xPseudoHR"
    (tmp_path / "Dataset913_Other").mkdir()
    assert brats_4x.pseudohr_dataset(str(tmp_path)) == "Dataset913_Other"


def test_sr_nnunet_super_resolves_the_thick_slice_test_images_as_part_of_its_prediction(tmp_path, monkeypatch):
    """The prediction time of "SR + stock nnU-Net" includes super-resolving the test image, as the guided REHRSeg
    designs' does (issue 28's third bar compares them)."""
    import argparse
    brats_4x = load_brats_4x()
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    args = argparse.Namespace(lr_epochs=2, finetune_epochs=1)
    models = brats_4x.models_of_split(str(tmp_path / "raw"), "Dataset913_PseudoHR", str(tmp_path / "sr_model"), args)
    sr_nnunet, lr = models["sr_nnunet"], brats_4x.DATASETS["lr"]
    assert sr_nnunet.sr_model == str(tmp_path / "sr_model") and sr_nnunet.dataset == "Dataset913_PseudoHR"
    assert sr_nnunet.inputs == str(tmp_path / "raw" / f"Dataset{lr[0]}_{lr[1]}" / "imagesTs")
    assert models["sr_nnunet_labelFree"].sr_model == sr_nnunet.sr_model
    assert models["sr_nnunet_labelFree"].dataset == "Dataset915_BratsPseudoHRLabelFree"
    assert all(model.sr_model is None for name, model in models.items() if not name.startswith("sr_nnunet"))
    commands = []

    def fake_run(command: list[str], env: dict | None = None) -> int:  # each script creates its -o folder
        commands.append(command)
        os.makedirs(command[command.index("-o") + 1], exist_ok=True)
        return 1

    monkeypatch.setattr(brats_4x, "run", fake_run)
    output = tmp_path / "predictions" / "sr_nnunet"
    brats_4x.predict(sr_nnunet, str(output), argparse.Namespace(device="cpu"))
    assert [os.path.basename(c[0]) for c in commands] == ["rehrseg_super_resolve", "nnUNetv2_predict"]
    super_resolved = commands[0][commands[0].index("-o") + 1]
    assert commands[0][commands[0].index("-i") + 1] == sr_nnunet.inputs
    assert commands[1][commands[1].index("-i") + 1] == super_resolved != sr_nnunet.inputs
    marker = json.loads((output / "benchmark_predict_complete.json").read_text())
    assert marker["seconds"] >= marker["super_resolve_seconds"] >= 0


def test_recommended_key_is_the_design_that_rehrsegtrainer_trains():
    brats_4x = load_brats_4x()
    from brats_methods import METHODS, recommended_key

    from rehrseg_nnunet.training.trainer import REHRSegTrainer
    key = recommended_key()
    assert key != "rehrseg" and METHODS[key].schedule == "fine_tune"
    assert brats_4x.trainer_class_named(METHODS[key].trainer).hr_guidance == REHRSegTrainer.hr_guidance


def test_leave_one_out_folds_and_the_reuse_of_the_fixed_split(tmp_path):
    import argparse
    brats_4x = load_brats_4x()
    args = argparse.Namespace(train_cases=["pat0001", "pat0002", "pat0003"], test_cases=["pat0004"], folds=0,
                              leave_one_out=["pat0004", "pat0003", "pat0002"])
    folds = brats_4x.splits(args)
    assert [(name, test) for name, _, test in folds] == [
        ("test_pat0004", ["pat0004"]), ("test_pat0003", ["pat0003"]), ("test_pat0002", ["pat0002"])]
    assert folds[1][1] == ["pat0001", "pat0002", "pat0004"]
    (tmp_path / "fixed").mkdir()  # a folder from before split records: the default split
    assert brats_4x.split_work_folder(str(tmp_path), *folds[0]) == str(tmp_path / "fixed")
    assert brats_4x.split_work_folder(str(tmp_path), *folds[1]) == str(tmp_path / "test_pat0003")
    # the record written there finds the folder again under any name
    assert brats_4x.split_work_folder(str(tmp_path), "fold9", ["pat0004", "pat0002", "pat0001"], ["pat0003"]) == str(
        tmp_path / "test_pat0003")
    assert not (tmp_path / "fold9").exists()


def test_run_reports_the_peak_memory_of_the_command_and_fails_with_it():
    brats_4x = load_brats_4x()
    touch = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(range(0, len(b), 4096))"
    assert brats_4x.run([sys.executable, "-c", touch]) >= 300 * 2**20
    assert brats_4x.run([sys.executable, "-c", "pass"]) < 200 * 2**20
    with pytest.raises(subprocess.CalledProcessError):
        brats_4x.run([sys.executable, "-c", "raise SystemExit(3)"])


def test_the_ensemble_averages_its_members_hr_probabilities_and_adds_their_prediction_times(tmp_path, monkeypatch):
    """The ensemble row writes argmax(mean of the members' probabilities) on their HR grid; its prediction time is
    the members' sum; it waits while a member's probabilities are missing and refuses members on other grids."""
    import numpy as np
    import SimpleITK as sitk
    brats_4x = load_brats_4x()
    from brats_methods import ENSEMBLES, METHODS
    key = "ensemble_rehrseg_hrStem_sr_nnunet"
    members = ENSEMBLES[key]
    assert all(METHODS[m].save_probabilities for m in members)
    rng = np.random.default_rng(0)
    probabilities = [rng.dirichlet(np.ones(5), size=(3, 4, 6)).transpose(3, 0, 1, 2) for _ in members]
    predictions = tmp_path / "predictions"

    def write_member(member: str, array: np.ndarray, seconds: float, origin=(1.0, 2.0, 3.0)) -> None:
        folder = predictions / METHODS[member].model_name(member)
        folder.mkdir(parents=True, exist_ok=True)
        segmentation = sitk.GetImageFromArray(array.argmax(0).astype(np.uint8))
        segmentation.SetSpacing((0.9, 0.9, 1.0))
        segmentation.SetOrigin(origin)
        sitk.WriteImage(segmentation, str(folder / "pat0003.nii.gz"))
        np.savez_compressed(folder / "pat0003.npz", probabilities=array.astype(np.float16))
        (folder / "benchmark_predict_complete.json").write_text(json.dumps(
            {"seconds": seconds, "peak_rss_bytes": 2**20, "saved_probabilities": True}))

    write_member(members[0], probabilities[0], 10.0)
    brats_4x.predict_ensemble(key, str(predictions), ["pat0003"])
    assert not (predictions / key).exists()  # the second member is not predicted yet
    write_member(members[1], probabilities[1], 5.0, origin=(1.0, 2.0, 4.0))
    with pytest.raises(RuntimeError, match="not on the grid"):
        brats_4x.predict_ensemble(key, str(predictions), ["pat0003"])
    write_member(members[1], probabilities[1], 5.0)
    brats_4x.predict_ensemble(key, str(predictions), ["pat0003"])
    ensembled = sitk.ReadImage(str(predictions / key / "pat0003.nii.gz"))
    expected = np.mean([p.astype(np.float16).astype(np.float32) for p in probabilities], axis=0).argmax(0)
    assert np.array_equal(sitk.GetArrayFromImage(ensembled), expected)
    assert not np.array_equal(expected, probabilities[0].argmax(0))  # the average is not just one member
    assert np.allclose(ensembled.GetOrigin(), (1.0, 2.0, 3.0)) and np.allclose(ensembled.GetSpacing(), (0.9, 0.9, 1.0))
    marker = json.loads((predictions / key / "benchmark_predict_complete.json").read_text())
    assert 15.0 <= marker["seconds"] < 15.0 + 60 and marker["members"] == list(members)


def test_the_label_free_dataset_pairs_super_resolved_images_with_the_pseudohr_labels(tmp_path, monkeypatch):
    """sr_nnunet_labelFree trains on imagesTr super-resolved without the LR label (rehrseg_super_resolve) and the
    pseudo-HR dataset's labels; an image off its label's grid stops it before dataset.json is written."""
    import argparse

    import numpy as np
    import SimpleITK as sitk
    brats_4x = load_brats_4x()
    raw, pseudohr = tmp_path / "raw", "Dataset913_BratsLR4xPseudoHR"
    (raw / pseudohr / "labelsTr").mkdir(parents=True)
    label = sitk.GetImageFromArray(np.zeros((8, 4, 4), np.uint8))
    label.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(label, str(raw / pseudohr / "labelsTr" / "pat0001.nii.gz"))
    (raw / pseudohr / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1c"}, "labels": {"background": 0, "tumour": 1}, "numTraining": 1,
        "file_ending": ".nii.gz", "rehrseg": {"uncertainty_folder": "uncertaintyTr"}}))
    commands, spacing = [], [1.0]

    def fake_super_resolve(command: list[str], env: dict | None = None) -> int:
        commands.append(command)
        output = Path(command[command.index("-o") + 1])
        output.mkdir(parents=True, exist_ok=True)
        image = sitk.GetImageFromArray(np.ones((8, 4, 4), np.float32))
        image.SetSpacing((1.0, 1.0, spacing[0]))
        sitk.WriteImage(image, str(output / "pat0001_0000.nii.gz"))
        return 1

    monkeypatch.setattr(brats_4x, "run", fake_super_resolve)
    args = argparse.Namespace(device="cpu")
    target = raw / brats_4x.LABEL_FREE_DATASET
    spacing[0] = 4.0
    with pytest.raises(RuntimeError, match="not on the grid"):
        brats_4x.make_label_free_dataset(str(raw), pseudohr, str(tmp_path / "sr_model"), args)
    assert not (target / "dataset.json").exists()
    spacing[0] = 1.0
    brats_4x.make_label_free_dataset(str(raw), pseudohr, str(tmp_path / "sr_model"), args)
    assert os.path.basename(commands[-1][0]) == "rehrseg_super_resolve"
    assert commands[-1][commands[-1].index("-i") + 1].endswith(os.path.join("Dataset911_BratsLR4x", "imagesTr"))
    assert (target / "labelsTr" / "pat0001.nii.gz").read_bytes() == (
        raw / pseudohr / "labelsTr" / "pat0001.nii.gz").read_bytes()
    dataset = json.loads((target / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "tumour": 1} and "rehrseg" not in dataset


def test_the_cv_merge_pools_fold_jsons_scores_both_grids_and_recommends_by_the_tie_rule(tmp_path):
    """brats_4x_cv.py builds the decision JSON from fold JSONs alone: per-case HR and LR-grid class means, the
    Spearman rho per case, committed rows only where no fold ran them, and the REHRSeg row by issue 34's rule."""
    import copy
    load_brats_4x()
    spec = importlib.util.spec_from_file_location("brats_4x_cv", BENCHMARKS / "brats_4x_cv.py")
    cv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cv)
    guided = json.loads((BENCHMARKS / "results" / "brats_4x_4000_guided.json").read_text())
    folds = tmp_path / "folds"
    folds.mkdir()
    (folds / "pat0004.json").write_text(json.dumps(guided))
    other = copy.deepcopy(guided)
    other["test_cases"] = ["pat0003"]
    for row in other["methods"].values():
        row["per_case"] = {"test_pat0003/pat0003": next(iter(row["per_case"].values()))}
    other["methods"]["rehrseg_hrStem"]["per_case"]["test_pat0003/pat0003"]["hr"]["edema"]["dice"] = 0.9
    (folds / "pat0003.json").write_text(json.dumps(other))
    committed = ["pat0004:oracle_hr=brats_4x_4000.json", "pat0004:rehrseg_paper=brats_4x_4000.json"]
    result = cv.merge(str(folds), committed, str(BENCHMARKS / "results"))
    assert result["test_cases"] == ["pat0003", "pat0004"]
    paper, stem = result["methods"]["rehrseg_paper"], result["methods"]["rehrseg_hrStem"]
    assert all("brats_4x_4000.json" not in s for s in paper["source"])  # the fold's row wins over a committed one
    assert result["methods"]["oracle_hr"]["source"][0].startswith("benchmarks/results/brats_4x_4000.json")
    scores = guided["methods"]["rehrseg_paper"]["per_case"]["fixed/pat0004"]
    present = [c for c in cv.CLASSES if scores["lr"][c]["present"]]
    assert paper["per_case"]["pat0004"]["lr_class_mean"] == pytest.approx(
        sum(scores["lr"][c]["dice"] for c in present) / len(present))
    # stem: edema 0.9 on pat0003 lifts its class mean by (0.9 - 0.413) / 2 / 4 = 0.061 over the paper network
    assert stem["per_class_mean_hr_dice"] - paper["per_class_mean_hr_dice"] > cv.TIE
    assert result["recommended"] == "rehrseg_hrStem"
    assert -1 <= result["spearman_lr_vs_hr_class_mean"]["pat0004"]["rho"] <= 1
    assert "sr_nnunet" in result["pending"]
    assert result["verdict"]["checks"]["class_mean_vs_sr_nnunet_plus_0.01"] is False  # no sr_nnunet row: not met
    other["methods"]["rehrseg_hrStem"]["per_case"]["test_pat0003/pat0003"]["hr"]["edema"]["dice"] = 0.413
    (folds / "pat0003.json").write_text(json.dumps(other))
    result = cv.merge(str(folds), [], str(BENCHMARKS / "results"))
    assert result["recommended"] == "rehrseg_paper"  # within 0.01 of the stem (0.004 ahead) and faster to predict


def test_a_replace_row_takes_the_place_of_the_folds_own_which_stays_on_record(tmp_path):
    """--replace CASE:KEY=FILE: pat0004's REHRSeg pair comes from one committed LR start; the fold's own
    rehrseg_paper (another LR start) is kept under 'replaced' with its class means; a file without the row is a
    one-line error."""
    import copy
    load_brats_4x()
    spec = importlib.util.spec_from_file_location("brats_4x_cv", BENCHMARKS / "brats_4x_cv.py")
    cv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cv)
    guided = json.loads((BENCHMARKS / "results" / "brats_4x_4000_guided.json").read_text())
    fold = copy.deepcopy(guided)
    fold["methods"] = {"rehrseg_paper": fold["methods"]["rehrseg_paper"]}
    scores = next(iter(fold["methods"]["rehrseg_paper"]["per_case"].values()))
    for grid in ("hr", "lr"):
        for name in cv.CLASSES:
            scores[grid][name].update(dice=0.5, present=True)
    folds = tmp_path / "folds"
    folds.mkdir()
    (folds / "pat0004.json").write_text(json.dumps(fold))
    result = cv.merge(str(folds), [], str(BENCHMARKS / "results"), cv.DEFAULT_REPLACED)
    paper = result["methods"]["rehrseg_paper"]
    committed = guided["methods"]["rehrseg_paper"]["per_class_mean_hr_dice"]
    assert paper["per_class_mean_hr_dice"] == pytest.approx(committed)
    assert paper["source"][0].startswith("benchmarks/results/brats_4x_4000_guided.json")
    assert "rehrseg_hrStem" in result["methods"]  # the pair's other row, though the fold did not run it
    own = result["replaced"]["pat0004"]["rehrseg_paper"]
    assert own["hr_class_mean"] == pytest.approx(0.5) and own["lr_class_mean"] == pytest.approx(0.5)
    assert own["source"].endswith("pat0004.json")
    with pytest.raises(ValueError, match="has no row rehrseg_paper for pat0003"):
        cv.merge(str(folds), [], str(BENCHMARKS / "results"), ["pat0003:rehrseg_paper=brats_4x_4000_guided.json"])


def test_a_fold_cut_short_has_its_finished_models_written_and_merged_as_pending(tmp_path):
    """The runner writes the fold JSON after every model's prediction (write_results with the scores so far), so a
    lost work folder costs only what was not yet scored; the merge takes such a fold's rows and lists the rest as
    pending."""
    import argparse
    brats_4x = load_brats_4x()
    spec = importlib.util.spec_from_file_location("brats_4x_cv", BENCHMARKS / "brats_4x_cv.py")
    cv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cv)
    guided = json.loads((BENCHMARKS / "results" / "brats_4x_4000_guided.json").read_text())
    paper = guided["methods"]["rehrseg_paper"]
    scores = next(iter(paper["per_case"].values()))
    split_scores = {"rehrseg_paper": {"per_case": {"pat0003": scores}, "train_seconds": 600.0, "trainer": "x",
                                      **{cost: paper.get(cost) for cost in brats_4x.COST_KEYS}}}
    output = tmp_path / "folds" / "pat0003.json"
    args = argparse.Namespace(train_cases=["pat0001", "pat0002", "pat0003"], test_cases=["pat0004"], folds=0,
                              leave_one_out=["pat0003"], output=str(output), lr_epochs=96, finetune_epochs=64,
                              iterations=25, val_iterations=2, patch_size=[32, 64, 64], base_features=16,
                              max_features=128, batch_size=2, sr_steps=[1000, 300, 600], seed=0, device="cpu",
                              methods=["rehrseg_paper", "sr_nnunet"])
    methods = brats_4x.write_results({"test_pat0003": split_scores}, args, 0.0)
    written = json.loads(output.read_text())
    assert written["test_cases"] == ["pat0003"] and written["pending"] == ["sr_nnunet"]
    assert set(methods) == set(written["methods"]) == {"rehrseg_paper"}
    assert list(written["methods"]["rehrseg_paper"]["per_case"]) == ["test_pat0003/pat0003"]
    result = cv.merge(str(output.parent), [], str(BENCHMARKS / "results"))
    assert result["methods"]["rehrseg_paper"]["per_case"]["pat0003"]["hr_class_mean"] == pytest.approx(
        cv.class_mean(scores, "hr"))
    assert "sr_nnunet" in result["pending"] and result["folds"]["pat0003"][0]["pending"] == ["sr_nnunet"]
    # the work folder lost: the pending row run again on its own is a part of the fold, merged beside its rows
    sr_scores = {**split_scores["rehrseg_paper"], "trainer": "nnUNetTrainer"}
    part_args = argparse.Namespace(**{**vars(args), "methods": ["sr_nnunet"],
                                      "output": str(output.parent / "pat0003.b.json")})
    brats_4x.write_results({"test_pat0003": {"sr_nnunet": sr_scores}}, part_args, 0.0)
    result = cv.merge(str(output.parent), [], str(BENCHMARKS / "results"))
    assert {"rehrseg_paper", "sr_nnunet"} <= set(result["methods"]) and "sr_nnunet" not in result["pending"]
    assert [part["path"].split("/")[-1] for part in result["folds"]["pat0003"]] == ["pat0003.json", "pat0003.b.json"]
    table = cv.readme_table(result).splitlines()
    assert len(table) == 2 + len(result["methods"])
    row = next(line for line in table if line.startswith("| rehrseg_paper") or line.startswith("| **rehrseg_paper"))
    assert f"| {result['methods']['rehrseg_paper']['per_class_mean_hr_dice']:.3f} ± 0.000 |" in row
    # the user is told to type what ships: -tr REHRSegTrainer for the design it trains, the variant's name otherwise
    from brats_methods import recommended_key
    shipped = "`-tr REHRSegTrainer`," if recommended_key() == "rehrseg_paper" else "`-tr REHRSegTrainer_paper`,"
    assert shipped in row
    # every class of every path, in the same order as the first table
    classes = cv.readme_class_table(result).splitlines()
    assert len(classes) == len(table) and classes[0].startswith("| path | necrosis | edema | non enhancing |")
    assert [line.split(" | ")[0] for line in classes[2:]] == [line.split(" | ")[0].replace("**", "")
                                                             for line in table[2:]]
    necrosis = result["methods"]["rehrseg_paper"]["hr"]["necrosis"]["dice"]["mean"]
    assert f"| rehrseg_paper | {necrosis:.3f} |" in cv.readme_class_table(result)
    # --readme: the table between the README's markers is replaced, the rest of the README kept as it was
    start, end = cv.README_MARKERS
    readme = f"# title\n\n## Which path should I use?\n\n{start}\n| old | table |\n{end}\n\ntext after\n"
    rewritten = cv.with_readme_table(readme, cv.readme_table(result))
    assert "| old | table |" not in rewritten and cv.readme_table(result) in rewritten
    assert rewritten.startswith("# title\n") and rewritten.endswith(f"{end}\n\ntext after\n")
    assert cv.with_readme_table(rewritten, cv.readme_table(result)) == rewritten
    with pytest.raises(ValueError, match="Which path should I use"):
        cv.with_readme_table(readme.replace(end, ""), "| table |")


def test_the_readme_quotes_the_decision_json():
    """Once benchmarks/results/brats_4x_cv.json is committed, README's 'Which path should I use?' table is the one
    that JSON gives (rewritten by `python benchmarks/brats_4x_cv.py --readme README.md`)."""
    decision = BENCHMARKS / "results" / "brats_4x_cv.json"
    if not decision.is_file():
        pytest.skip("benchmarks/results/brats_4x_cv.json is not committed yet: the decision run (issue 34) has not "
                    "finished its folds")
    spec = importlib.util.spec_from_file_location("brats_4x_cv", BENCHMARKS / "brats_4x_cv.py")
    cv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cv)
    readme = (BENCHMARKS.parent / "README.md").read_text()
    assert cv.readme_tables(json.loads(decision.read_text())) in readme
