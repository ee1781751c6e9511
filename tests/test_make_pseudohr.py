"""rehrseg_make_pseudohr through its console script."""

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import PHANTOM_DIRECTION, PHANTOM_ORIGIN, console_script, run_script, tree_digest
from phantoms import write_thick_slice_dataset


@pytest.fixture()
def raw_copy(tmp_path, trained_sr_model):
    """A private nnUNet_raw holding a copy of the SR model's source dataset (plus an imagesTs case)."""
    raw = tmp_path / "raw"
    source = raw / "Dataset502_Phantom"
    shutil.copytree(os.path.join(trained_sr_model["raw"], "Dataset502_Phantom"), source)
    (source / "imagesTs").mkdir()
    for channel in range(2):
        shutil.copy(source / "imagesTr" / f"case001_{channel:04d}.nii.gz",
                    source / "imagesTs" / f"test000_{channel:04d}.nii.gz")
    return {"raw": raw, "source": source, "model": trained_sr_model["model"],
            "env": {"nnUNet_raw": str(raw), "nnUNet_results": str(tmp_path / "results"),
                    "nnUNet_preprocessed": str(tmp_path / "preprocessed")}}


def make(raw_copy, *extra):
    return run_script("rehrseg_make_pseudohr", ["-d", "502", "-o", "602", "-m", raw_copy["model"], "-device", "cpu",
                                                *extra], raw_copy["env"])


@pytest.mark.bad_input  # kept scenario: 20-degree rotated geometry exact, source untouched
def test_pseudohr_dataset_geometry_values_and_metadata(raw_copy):
    before = tree_digest(raw_copy["source"])
    result = make(raw_copy)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 case(s) written" not in result.stdout and "3 case(s) written, 0 skipped" in result.stdout
    target = raw_copy["raw"] / "Dataset602_PhantomPseudoHR"
    assert tree_digest(raw_copy["source"]) == before, "the source dataset was modified"
    for case in ("case000", "case001"):
        images = [sitk.ReadImage(str(target / "imagesTr" / f"{case}_{c:04d}.nii.gz")) for c in range(2)]
        label = sitk.ReadImage(str(target / "labelsTr" / f"{case}.nii.gz"))
        uncertainty = sitk.ReadImage(str(target / "uncertaintyTr" / f"{case}.nii.gz"))
        for image in images + [label, uncertainty]:
            # LR: 12 slices of 4 mm; HR: 48 slices of 1 mm whose origin is the phantom's HR origin
            assert image.GetSize() == (48, 48, 48)
            np.testing.assert_allclose(image.GetSpacing(), (1.0, 1.0, 1.0))
            np.testing.assert_allclose(image.GetOrigin(), PHANTOM_ORIGIN, atol=1e-4)
            np.testing.assert_allclose(image.GetDirection(), PHANTOM_DIRECTION, atol=1e-6)
        labels = sitk.GetArrayFromImage(label)
        assert set(np.unique(labels)) == {0, 1, 2}
        for channel, image in enumerate(images):
            # each channel, averaged back onto the thick slices, reproduces its own source channel
            # (channel 1 is 2.5 x channel 0 in the source, so a swapped channel gives a slope of 2.5 or 0.4)
            lr = sitk.GetArrayFromImage(
                sitk.ReadImage(str(raw_copy["source"] / "imagesTr" / f"{case}_{channel:04d}.nii.gz")))
            pooled = sitk.GetArrayFromImage(image).reshape(12, 4, 48, 48).mean(1)
            slope = np.polyfit(lr.ravel(), pooled.ravel(), 1)[0]
            assert np.corrcoef(lr.ravel(), pooled.ravel())[0, 1] > 0.9 and 0.8 < slope < 1.25, (channel, slope)
        u = sitk.GetArrayFromImage(uncertainty)
        assert u.dtype == np.float32 and u.min() >= 0 and u.max() <= 1
        assert (target / "qc" / f"{case}.png").stat().st_size > 1000
    assert (target / "imagesTs" / "test000_0001.nii.gz").is_file() and \
        (target / "uncertaintyTs" / "test000.nii.gz").is_file()
    assert not (target / "labelsTs").exists()
    # "SR + stock nnU-Net": rehrseg_super_resolve makes from a test image what rehrseg_make_pseudohr put in imagesTs
    # (training cases differ by design: there the LR label joins the super-resolution)
    super_resolved = raw_copy["raw"].parent / "super_resolved"
    assert run_script("rehrseg_super_resolve", ["-i", str(raw_copy["source"] / "imagesTs"), "-o", str(super_resolved),
                                                "-m", raw_copy["model"], "-device", "cpu"],
                      raw_copy["env"]).returncode == 0
    for channel in range(2):
        name = f"test000_{channel:04d}.nii.gz"
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(super_resolved / name))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(target / "imagesTs" / name))))
    meta = json.loads((target / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["labels"] == {"background": 0, "shell": 1, "core": 2}
    block = meta["rehrseg"]
    assert block["scale_factor"] == 4 and block["slice_axis"] == 2 and block["source_dataset"] == "Dataset502_Phantom"
    assert block["lr_spacing"] == [1.0, 1.0, 4.0] and block["hr_spacing"] == [1.0, 1.0, 1.0]
    assert len(block["sr_checkpoint_sha256"]) == 64 and block["sr_model_folder"] == os.path.abspath(raw_copy["model"])
    assert not (target / ".rehrseg_incomplete").exists()

    # a re-run skips everything
    again = make(raw_copy)
    assert again.returncode == 0 and "0 case(s) written, 3 skipped" in again.stdout

    # nnU-Net accepts the dataset
    check = subprocess.run([console_script("nnUNetv2_plan_and_preprocess"), "-d", "602", "--verify_dataset_integrity",
                            "-c", "3d_fullres", "-np", "1", "-npfp", "1"], env={**os.environ, **raw_copy["env"]},
                           capture_output=True, text=True, timeout=600)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]


@pytest.mark.bad_input
def test_two_parts_and_two_workers_give_the_same_files_as_one_process(raw_copy):
    assert make(raw_copy, "-part_id", "0", "-num_parts", "2").returncode == 0
    assert make(raw_copy, "-part_id", "1", "-num_parts", "2").returncode == 0
    parts = raw_copy["raw"] / "Dataset602_PhantomPseudoHR"
    single = run_script("rehrseg_make_pseudohr", ["-d", "502", "-o", "603", "-m", raw_copy["model"], "-device", "cpu"],
                        raw_copy["env"])
    assert single.returncode == 0, single.stderr[-2000:]
    workers = run_script("rehrseg_make_pseudohr", ["-d", "502", "-o", "605", "-m", raw_copy["model"], "-device", "cpu",
                                                   "-np", "2"], raw_copy["env"])
    assert workers.returncode == 0 and "3 case(s) written, 0 skipped" in workers.stdout, workers.stderr[-2000:]
    whole = raw_copy["raw"] / "Dataset603_PhantomPseudoHR"
    files = sorted(str(p.relative_to(whole)) for p in whole.rglob("*.nii.gz"))
    assert len(files) == 2 * 4 + 3
    for other in (parts, raw_copy["raw"] / "Dataset605_PhantomPseudoHR"):
        assert files == sorted(str(p.relative_to(other)) for p in other.rglob("*.nii.gz"))
        assert sorted(p.name for p in (other / "qc").iterdir()) == sorted(p.name for p in (whole / "qc").iterdir())
        for name in files:
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(whole / name)))
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(other / name)))
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"{other.name}/{name}")


@pytest.mark.bad_input
def test_interrupted_run_is_completed_by_a_rerun(tmp_path, trained_sr_model):
    raw = tmp_path / "raw"
    write_thick_slice_dataset(str(raw), dataset_id=504, channels=2, num_cases=8, direction=PHANTOM_DIRECTION,
                              origin=PHANTOM_ORIGIN)
    env = {**os.environ, "nnUNet_raw": str(raw)}
    args = [console_script("rehrseg_make_pseudohr"), "-d", "504", "-o", "604", "-m", trained_sr_model["model"],
            "-device", "cpu"]
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    labels = raw / "Dataset604_PhantomPseudoHR" / "labelsTr"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not (labels.is_dir() and any(labels.iterdir())):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list(labels.iterdir()))
    assert 1 <= done < 8, f"{done} cases were complete when the run was killed"
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{8 - done} case(s) written, {done} skipped" in rerun.stdout
    target = raw / "Dataset604_PhantomPseudoHR"
    assert not (target / ".rehrseg_incomplete").exists()
    for path in target.rglob("*.nii.gz"):
        assert sitk.ReadImage(str(path)).GetSize() == (48, 48, 48)  # every file complete and readable
    assert len(list(target.rglob("*.nii.gz"))) == 8 * 4


def _refused(raw_copy, args, expected):
    listing = sorted(os.listdir(raw_copy["raw"]))
    before = tree_digest(raw_copy["raw"])
    result = run_script("rehrseg_make_pseudohr", args, raw_copy["env"])
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert sorted(os.listdir(raw_copy["raw"])) == listing and tree_digest(raw_copy["raw"]) == before
    return lines[0]


@pytest.mark.bad_input
def test_bad_input_is_refused_and_writes_nothing(raw_copy, tmp_path):
    model = raw_copy["model"]
    # not an nnU-Net raw dataset
    (raw_copy["raw"] / "Dataset505_Broken" / "imagesTr").mkdir(parents=True)
    _refused(raw_copy, ["-d", "505", "-o", "605", "-m", model], "dataset.json is missing")
    # missing SR model
    _refused(raw_copy, ["-d", "502", "-o", "605", "-m", str(tmp_path / "nowhere")], "not an SR model folder")
    # incompatible model: another label set
    other = tmp_path / "other_model"
    shutil.copytree(model, other)
    config = json.loads((other / "config.json").read_text())
    config["label_values"] = [0, 1]
    (other / "config.json").write_text(json.dumps(config))
    _refused(raw_copy, ["-d", "502", "-o", "605", "-m", str(other)], "knows labels [0, 1]")
    # incompatible model: another r (2 mm slices)
    config["label_values"], config["lr_spacing"] = [0, 1, 2], [1.0, 1.0, 2.0]
    (other / "config.json").write_text(json.dumps(config))
    _refused(raw_copy, ["-d", "502", "-o", "605", "-m", str(other)], "trained for 2 mm slices")
    # incompatible model: another slice axis (4 mm along x)
    config["lr_spacing"], config["slice_axis"] = [4.0, 1.0, 1.0], 0
    (other / "config.json").write_text(json.dumps(config))
    _refused(raw_copy, ["-d", "502", "-o", "605", "-m", str(other)], "slices along x")
    # incompatible model: another channel count
    config["lr_spacing"], config["slice_axis"] = [1.0, 1.0, 4.0], 2
    config["channel_names"] = {"0": "T1"}
    (other / "config.json").write_text(json.dumps(config))
    _refused(raw_copy, ["-d", "502", "-o", "605", "-m", str(other)], "has 1 image channel(s) but")
    # target id used by another dataset
    (raw_copy["raw"] / "Dataset606_Other").mkdir()
    _refused(raw_copy, ["-d", "502", "-o", "606", "-m", model], "already used by")
    # a case whose geometry differs from the model's
    path = raw_copy["source"] / "imagesTr" / "case001_0001.nii.gz"
    image = sitk.ReadImage(str(path))
    image.SetSpacing((1.0, 1.0, 8.0))
    sitk.WriteImage(image, str(path))
    line = _refused(raw_copy, ["-d", "502", "-o", "605", "-m", model], "case001_0001.nii.gz")
    assert "trained for 4 mm slices" in line


@pytest.mark.bad_input
@pytest.mark.parametrize("problem", ["undeclared", "fractional", "nan_image", "label_geometry", "truncated"])
def test_bad_case_content_is_refused_before_anything_is_written(raw_copy, problem):
    """Checked in one pass over the cases before dataset.json or any case is written (labels were dropped or
    rounded silently, NaN and geometry caught only after the first case was written)."""
    source = raw_copy["source"]
    label_path = source / "labelsTr" / "case001.nii.gz"
    label = sitk.ReadImage(str(label_path))
    array = sitk.GetArrayFromImage(label)
    if problem == "undeclared":
        array[0, 0, 0] = 5
        expected = "label values [5]"
    elif problem == "fractional":
        array = array.astype(np.float32) + 0.5
        expected = "non-integer label values"
    if problem in ("undeclared", "fractional"):
        changed = sitk.GetImageFromArray(array)
        changed.CopyInformation(label)
        sitk.WriteImage(changed, str(label_path))
        fragment = "case001.nii.gz"
    elif problem == "nan_image":
        path = source / "imagesTr" / "case001_0000.nii.gz"
        image = sitk.ReadImage(str(path))
        values = sitk.GetArrayFromImage(image)
        values[2, 3, 4] = np.nan
        changed = sitk.GetImageFromArray(values)
        changed.CopyInformation(image)
        sitk.WriteImage(changed, str(path))
        fragment, expected = "case001_0000.nii.gz", "NaN"
    elif problem == "label_geometry":
        label.SetOrigin((9.0, 9.0, 9.0))
        sitk.WriteImage(label, str(label_path))
        fragment, expected = "case001.nii.gz", "geometry"
    else:
        data = label_path.read_bytes()
        label_path.write_bytes(data[: len(data) // 2])
        fragment, expected = "case001.nii.gz", "truncated"
    line = _refused(raw_copy, ["-d", "502", "-o", "605", "-m", raw_copy["model"]], fragment)
    assert expected in line, line


@pytest.mark.bad_input
def test_a_3mm_case_among_4mm_ones_is_refused(raw_copy):
    """Its HR grid would be 0.75 mm while the dataset's is 1 mm: refused before anything is written."""
    source = raw_copy["source"]
    for path in [*(source / "imagesTr").glob("case001_*.nii.gz"), source / "labelsTr" / "case001.nii.gz"]:
        image = sitk.ReadImage(str(path))
        image.SetSpacing((1.0, 1.0, 3.0))
        sitk.WriteImage(image, str(path))
    line = _refused(raw_copy, ["-d", "502", "-o", "605", "-m", raw_copy["model"]], "case001_0000.nii.gz")
    assert "trained for 4 mm slices along z (r = 4: 3.5-4.5 mm accepted)" in line, line


@pytest.mark.bad_input
def test_labels_in_dataset_json_must_be_consecutive_numbers(raw_copy):
    path = raw_copy["source"] / "dataset.json"
    dataset_json = json.loads(path.read_text())
    for labels, expected in (({"background": 0, "shell": 1, "core": 3}, "not consecutive"),
                             ({"background": "0", "shell": "1", "core": "2"}, "string value"),
                             (["background", "shell", "core"], "must be an object")):
        path.write_text(json.dumps({**dataset_json, "labels": labels}))
        _refused(raw_copy, ["-d", "502", "-o", "605", "-m", raw_copy["model"]], expected)
    path.write_text("{not json")
    _refused(raw_copy, ["-d", "502", "-o", "605", "-m", raw_copy["model"]], "not valid JSON")


@pytest.mark.bad_input
def test_a_write_beyond_the_file_size_limit_fails_cleanly_and_a_rerun_completes(raw_copy):
    """SimpleITK only prints "wrote only 0 of N bytes" when a file-size limit stops a write; every written
    image is read back before it is renamed into place, so the run fails with one line and leaves no case
    that looks complete."""
    import nibabel

    target = raw_copy["raw"] / "Dataset602_PhantomPseudoHR"
    command = " ".join([console_script("rehrseg_make_pseudohr"), "-d", "502", "-o", "602", "-m", str(raw_copy["model"]),
                        "-device", "cpu"])
    limited = subprocess.run(["bash", "-c", f"ulimit -f 40 && {command}"], env={**os.environ, **raw_copy["env"]},
                             capture_output=True, text=True, timeout=600)  # 40 blocks of 512 bytes: 20 kB per file
    assert limited.returncode != 0
    assert "Traceback" not in limited.stderr, limited.stderr[-2000:]
    last = limited.stderr.strip().splitlines()[-1]
    assert "rehrseg_make_pseudohr: error:" in last and "ulimit -f" in last, last
    assert not list(target.glob("labelsTr/*.nii.gz")), "a case looks complete after a failed write"
    assert not (target / ".rehrseg_incomplete").exists()
    rerun = make(raw_copy)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "3 case(s) written, 0 skipped" in rerun.stdout
    for path in sorted(target.glob("*Tr/*.nii.gz")) + sorted(target.glob("*Ts/*.nii.gz")):
        simpleitk = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        from_nibabel = np.asarray(nibabel.load(str(path)).dataobj)
        assert simpleitk.shape == from_nibabel.shape[::-1]
        np.testing.assert_array_equal(simpleitk, from_nibabel.transpose(2, 1, 0))


@pytest.mark.bad_input
def test_dataset_names_and_ids_cannot_escape(raw_copy):
    """-d takes an id or an exact folder name (no path tricks); -o an id from 1 to 999."""
    before = sorted(os.listdir(raw_copy["raw"]))
    cases = [(["-d", "Dataset502_Phantom/../Dataset502_Phantom", "-o", "603"], "not a DatasetXXX_Name folder name"),
             (["-d", "502", "-o", "1950"], "nnU-Net ids run from 1 to 999"),
             (["-d", "502", "-o", "-5"], "nnU-Net ids run from 1 to 999")]
    for args, fragment in cases:
        result = run_script("rehrseg_make_pseudohr", [*args, "-m", raw_copy["model"], "-device", "cpu"],
                            raw_copy["env"])
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert fragment in result.stderr.strip().splitlines()[-1], result.stderr
    assert sorted(os.listdir(raw_copy["raw"])) == before
