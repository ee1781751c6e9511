"""The README's main job (examples/quickstart.py) end to end, with a tiny SR and trainer schedule.

Same script, same commands, same embedded data and the same trainer (REHRSegTrainer_cpu) as
`bash examples/quickstart.sh`; only the SR steps are shortened (5 per stage), so this checks that
every stage runs and that its outputs are where and what they should be, not quality.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("nilearn", reason="nilearn (the example data's package) is not installed")
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_runs_end_to_end(tmp_path):
    work = tmp_path / "demo"
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        env.pop(variable, None)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "quickstart.py"), "--work", str(work),
                             "--sr-steps", "5", "5", "5"],
                            env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    for index in range(1, 8):
        assert f"[{index}/7]" in result.stdout
    assert "REHRSeg HR prediction" in result.stdout and "thick-slice labels upsampled" in result.stdout

    # the HR segmentation of the held-out 4 mm input: 4x the slices at 1 mm, origin 1.5 mm below the LR one
    lr = sitk.ReadImage(str(work / "test" / "images" / "mnitest_0000.nii.gz"))
    hr = sitk.ReadImage(str(work / "predictions_hr" / "mnitest.nii.gz"))
    assert hr.GetSize() == (lr.GetSize()[0], lr.GetSize()[1], 4 * lr.GetSize()[2])
    np.testing.assert_allclose(hr.GetSpacing(), (1.0, 1.0, 1.0), atol=1e-6)
    np.testing.assert_allclose(hr.GetOrigin(), np.asarray(lr.GetOrigin()) - (0.0, 0.0, 1.5), atol=1e-4)
    assert set(np.unique(sitk.GetArrayFromImage(hr))) <= {0, 1, 2}

    summary = json.loads((work / "predictions_hr" / "summary_rehrseg.json").read_text())
    assert summary["grid"]["spacing"] == pytest.approx([1.0, 1.0, 1.0])
    assert 0.0 <= summary["mean"]["foreground"]["dice"] <= 1.0
    qc = work / "nnUNet_raw" / "Dataset991_MNIThickPseudoHR" / "qc"
    assert sorted(p.name for p in qc.iterdir()) == ["mni000.png", "mni001.png"]
