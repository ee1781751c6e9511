#!/usr/bin/env bash
# docs/recipe.md's recipe as a script: your own thick-slice scans, from a folder to HR segmentations.
# Edit the lines at the top, then, in the activated environment (source .venv/bin/activate):
#   bash examples/own_scans_recipe.sh
# tests/test_recipe.py checks that the commands below are exactly the block of docs/recipe.md, and runs that block.
set -euo pipefail
# --- edit these lines -----------------------------------------------------------------------------------------
SCANS=$HOME/thick_slice_scans             # your folder: CASE_image.nrrd + CASE_label.nrrd per case
IMAGE_SUFFIX=_image.nrrd                  # what follows the case name in an image's file name
LABEL_SUFFIX=_label.nrrd                  # what follows the case name in a label's file name
CHANNEL=MRI                               # the image's modality name (nnU-Net's channel_names)
LABELS='{"background": 0, "tumour": 1}'   # label names and values (nnU-Net's labels)
WORK=$HOME/rehrseg_work                   # nnU-Net's three folders and the segmentations go here
A=501                                     # id of the thick-slice dataset A (three digits, not yet used)
B=502                                     # id of its pseudo-HR dataset B
NAME=MyThick                              # dataset name (letters and digits)
DEVICE=cuda                               # cuda, mps or cpu
TRAINER=REHRSegTrainer                    # nnU-Net's 1000 epochs; REHRSegTrainer_cpu50epochs for a CPU first look
# --------------------------------------------------------------------------------------------------------------
export nnUNet_raw=$WORK/nnUNet_raw nnUNet_preprocessed=$WORK/nnUNet_preprocessed nnUNet_results=$WORK/nnUNet_results
RAW_A=$nnUNet_raw/Dataset${A}_$NAME
# 1. dataset A in nnU-Net's layout: imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz, dataset.json
export SCANS IMAGE_SUFFIX LABEL_SUFFIX CHANNEL LABELS RAW_A NAME
python - <<'EOF'
import json, os
import SimpleITK as sitk
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

scans, raw_a = os.environ["SCANS"], os.environ["RAW_A"]
image_suffix, label_suffix = os.environ["IMAGE_SUFFIX"], os.environ["LABEL_SUFFIX"]
cases = sorted(f[:-len(image_suffix)] for f in os.listdir(scans) if f.endswith(image_suffix))
if not cases:
    raise SystemExit(f"no file ending in {image_suffix} in {scans}")
os.makedirs(f"{raw_a}/imagesTr", exist_ok=True)
os.makedirs(f"{raw_a}/labelsTr", exist_ok=True)
for case in cases:
    sitk.WriteImage(sitk.ReadImage(f"{scans}/{case}{image_suffix}"), f"{raw_a}/imagesTr/{case}_0000.nii.gz")
    label = sitk.ReadImage(f"{scans}/{case}{label_suffix}")
    sitk.WriteImage(sitk.Cast(label, sitk.sitkUInt8), f"{raw_a}/labelsTr/{case}.nii.gz")
generate_dataset_json(raw_a, channel_names={0: os.environ["CHANNEL"]}, labels=json.loads(os.environ["LABELS"]),
                      num_training_cases=len(cases), file_ending=".nii.gz", dataset_name=os.environ["NAME"])
print(f"dataset A: {len(cases)} case(s) in {raw_a}")
EOF
# 2. the self-SR model (stages 1a-1c) and the pseudo-HR dataset B (images, labels, uncertainty maps, QC pictures)
rehrseg_train_sr -d $A -device $DEVICE
rehrseg_make_pseudohr -d $A -o $B -device $DEVICE
# 3. nnU-Net's plans and preprocessing of B, REHRSeg's plans on top, then training (fold all: any number of cases)
nnUNetv2_plan_and_preprocess -d $B -c 3d_fullres
rehrseg_plan -d $B
nnUNetv2_train $B 3d_fullres all -tr $TRAINER -p REHRSegPlans -device $DEVICE
# 4. HR segmentations of thick-slice images (here A's own images), scored against their thick-slice labels
rehrseg_predict -i $RAW_A/imagesTr -o $WORK/seg_hr -d $B -tr $TRAINER -f all -device $DEVICE
rehrseg_evaluate -ref $RAW_A/labelsTr -pred $WORK/seg_hr -djfile $RAW_A/dataset.json --resample-to-reference
