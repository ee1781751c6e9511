"""Merge the decision run's fold JSONs into ``benchmarks/results/brats_4x_cv.json`` and judge the recommendation.

Reads only committed files, so a lost work folder costs only an unfinished fold:
- ``benchmarks/results/brats_4x_cv/<test case>.json``: one leave-one-out fold each, written by
  ``benchmarks/brats_4x.py`` (run by ``benchmarks/decision_run.sh``) after every model it predicts, so a fold cut
  short has the rows it finished; ``<test case>.<part>.json``: the rest of a fold whose work folder was lost, run
  again for its pending rows only (a part's row replaces the same row of the files before it, in name order);
- ``--committed CASE:KEY=FILE`` rows for a test case that its fold did not run fresh (default: pat0004's
  ``nnunet_lr_upsampled_sdf``, ``interp_nnunet`` and ``oracle_hr`` from ``brats_4x_4000.json``), each marked
  with its ``source``;
- ``--replace CASE:KEY=FILE`` rows that take the place of the fold's own (default: pat0004's two REHRSeg rows from
  ``brats_4x_4000_guided.json``, where both were fine-tuned from one LR nnU-Net; fold pat0004 fine-tuned only
  ``rehrseg_paper``, from another LR nnU-Net, as the ensemble's member). The fold's row is kept under
  ``replaced`` with its class means, so the spread that the LR initialisation alone causes is on record.

Per method: ``per_class_mean_hr_dice``, ``hr_dice`` / ``hr_hd95`` (whole tumour), every class and region with mean
and std over test cases, ``per_case`` (each case's HR and LR-grid class means beside its scores), the costs
(``train_seconds_per_iteration`` and ``predict_seconds_per_volume`` timed alone where recorded, averaged over
folds; ``peak_rss_mb``) and ``source``. Per test case: the Spearman correlation between the methods' LR-grid and
HR class means (can a user with only thick-slice labels rank the paths?). ``ensemble_rehrseg_sr_nnunet`` is the
ensemble of the REHRSeg row with the better cross-validated class mean. ``recommended``: that REHRSeg row; within
0.01 the cheaper one (prediction time, then training time). The verdict applies issue 34's thresholds as they are.

    python benchmarks/brats_4x_cv.py            # writes benchmarks/results/brats_4x_cv.json, prints the tables
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from brats_methods import ENSEMBLES, REHRSEG_TRAINERS, recommended_key  # noqa: E402

CLASSES = ["necrosis", "edema", "non_enhancing", "enhancing"]
REHRSEG_ROWS = ("rehrseg_paper", "rehrseg_hrStem")
BASELINES = ("nnunet_lr_upsampled_sdf", "interp_nnunet", "sr_nnunet", "sr_nnunet_labelFree")
CHOSEN_ENSEMBLE = "ensemble_rehrseg_sr_nnunet"
#: the methods that decide (issue 34), in table order
DECIDING = (*BASELINES, *REHRSEG_ROWS, CHOSEN_ENSEMBLE, "oracle_hr")
DEFAULT_COMMITTED = [f"pat0004:{key}=brats_4x_4000.json" for key in
                     ("nnunet_lr_upsampled_sdf", "interp_nnunet", "oracle_hr")]
#: rows taken in place of the fold's own: pat0004's REHRSeg pair, fine-tuned from one LR nnU-Net (issue 34)
DEFAULT_REPLACED = [f"pat0004:{key}=brats_4x_4000_guided.json" for key in REHRSEG_ROWS]
#: within this class-mean difference the cheaper REHRSeg row is recommended
TIE = 0.01


def class_mean(scores: dict, grid: str) -> float | None:
    """Mean Dice over the classes present in reference or prediction of one case on ``grid`` (``hr``/``lr``)."""
    values = [scores[grid][name]["dice"] for name in CLASSES if scores[grid][name]["present"]]
    return float(np.mean(values)) if values else None


def case_of(key: str) -> str:
    """``test_pat0003/pat0003`` -> ``pat0003``."""
    return key.split("/")[-1]


def read_folds(folder: str) -> dict[str, list[dict]]:
    """Test case -> its fold's JSONs (the fold, then its parts, in name order), for every JSON in ``folder``."""
    folds: dict[str, list[dict]] = {}
    def name_parts(path: str) -> list[str]:  # pat0003.json before pat0003.b.json
        return os.path.basename(path)[:-len(".json")].split(".")

    for path in sorted(glob.glob(os.path.join(folder, "*.json")), key=name_parts):
        with open(path) as handle:
            fold = json.load(handle)
        for case in fold["test_cases"]:
            folds.setdefault(case, []).append({**fold, "path": os.path.relpath(path, os.path.dirname(HERE))})
    return folds


def committed_row(spec: str, results: str) -> tuple[str, str, dict | None]:
    """``CASE:KEY=FILE`` -> (case, key, the row of ``KEY`` in ``results/FILE`` for that case alone, with
    ``source``; None where the file has no such row)."""
    target, file_name = spec.split("=", 1)
    case, key = target.split(":", 1)
    with open(os.path.join(results, file_name)) as handle:
        earlier = json.load(handle)
    row = earlier["methods"].get(key)
    per_case = {k: v for k, v in (row or {}).get("per_case", {}).items() if case_of(k) == case}
    if not per_case:
        return case, key, None
    return case, key, {**row, "per_case": per_case,
                       "source": f"benchmarks/results/{file_name} ({earlier.get('command')})"}


def rows_per_case(folds: dict[str, list[dict]], committed: list[str], results: str,
                  replace: tuple[str, ...] = (), replaced: dict | None = None) -> dict[str, dict[str, dict]]:
    """method -> test case -> the row that scores it (fold rows first, a later part's over an earlier file's; a
    ``committed`` row only where no fold file has one; a ``replace`` row in place of the fold's, which goes into
    ``replaced`` [case][key]), with ``source`` set."""
    rows: dict[str, dict[str, dict]] = {}
    for case, parts in folds.items():
        for fold in parts:
            for key, row in fold["methods"].items():
                if case_of(next(iter(row["per_case"]))) == case:
                    rows.setdefault(key, {})[case] = {**row, "source": row.get("source") or fold["path"]}
    for spec in replace:
        case, key, row = committed_row(spec, results)
        if row is None:
            raise ValueError(f"--replace {spec}: benchmarks/results/{spec.split('=', 1)[1]} has no row {key} for "
                             f"{case}; name a file that scored it.")
        own = rows.setdefault(key, {}).get(case)
        if own is not None and replaced is not None:
            scores = next(iter(own["per_case"].values()))
            replaced.setdefault(case, {})[key] = {
                "hr_class_mean": class_mean(scores, "hr"), "lr_class_mean": class_mean(scores, "lr"),
                "initialised_from": own.get("initialised_from"), "source": own["source"],
                "replaced_by": row["source"]}
        rows[key][case] = row
    for spec in committed:
        case, key, row = committed_row(spec, results)
        if row is not None and case not in rows.get(key, {}):
            rows.setdefault(key, {})[case] = row
    return rows


def summary(per_case_rows: dict[str, dict]) -> dict:
    """One method over its test cases: scores with mean and std, per-case class means, costs, sources."""
    per_case = {case: next(iter(row["per_case"].values())) for case, row in sorted(per_case_rows.items())}
    out: dict = {"hr": {}, "lr": {}}
    for grid in ("hr", "lr"):
        for name in per_case[next(iter(per_case))][grid]:
            for metric in ("dice", "hd95"):
                values = [c[grid][name][metric] for c in per_case.values()
                          if c[grid][name]["present"] or name not in CLASSES]
                values = [v for v in values if v is not None and np.isfinite(v)]
                if values:
                    out[grid].setdefault(name, {})[metric] = {"mean": float(np.mean(values)),
                                                              "std": float(np.std(values)), "cases": len(values)}
    out["per_class_mean_hr_dice"] = float(np.mean([out["hr"][n]["dice"]["mean"] for n in CLASSES if n in out["hr"]]))
    out["per_class_mean_lr_dice"] = float(np.mean([out["lr"][n]["dice"]["mean"] for n in CLASSES if n in out["lr"]]))
    out["hr_dice"] = out["hr"]["whole_tumour"]["dice"]["mean"]
    out["hr_hd95"] = out["hr"]["whole_tumour"]["hd95"]["mean"]
    out["per_case"] = {case: {"hr_class_mean": class_mean(scores, "hr"), "lr_class_mean": class_mean(scores, "lr"),
                              "source": per_case_rows[case]["source"], **scores}
                       for case, scores in per_case.items()}
    out.update(costs(per_case_rows))
    out["source"] = sorted({row["source"] for row in per_case_rows.values()})
    return out


def costs(per_case_rows: dict[str, dict]) -> dict:
    """Costs averaged over the folds that recorded them; seconds per iteration timed alone where recorded."""
    def mean(values: list) -> float | None:
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None
    rows = list(per_case_rows.values())
    alone = mean([r.get("train_seconds_per_iteration_alone") for r in rows])
    peaks = [v for r in rows for v in (r.get("train_peak_rss_mb"), r.get("predict_peak_rss_mb")) if v is not None]
    return {"train_seconds_per_iteration": alone, "train_seconds_per_iteration_timed_alone": alone is not None,
            "predict_seconds_per_volume": mean([r.get("predict_seconds_per_volume") for r in rows]),
            "peak_rss_mb": max(peaks) if peaks else None}


def spearman_per_case(methods: dict[str, dict]) -> dict[str, dict]:
    """Per test case: Spearman's rho between the methods' LR-grid and HR class means, over the methods scored."""
    from scipy.stats import spearmanr
    cases = sorted({case for row in methods.values() for case in row["per_case"]})
    out = {}
    for case in cases:
        pairs = {key: (row["per_case"][case]["lr_class_mean"], row["per_case"][case]["hr_class_mean"])
                 for key, row in methods.items() if case in row["per_case"]}
        lr, hr = zip(*pairs.values(), strict=True)
        out[case] = {"rho": float(spearmanr(lr, hr).statistic) if len(pairs) > 2 else None,
                     "methods": sorted(pairs)}
    return out


def recommend(methods: dict[str, dict]) -> str | None:
    """The REHRSeg row with the better cross-validated class mean; within :data:`TIE` the cheaper one."""
    rows = [key for key in REHRSEG_ROWS if key in methods]
    if not rows:
        return None
    best = max(rows, key=lambda k: methods[k]["per_class_mean_hr_dice"])
    close = [k for k in rows if methods[best]["per_class_mean_hr_dice"] - methods[k]["per_class_mean_hr_dice"] < TIE]
    return min(close, key=lambda k: (methods[k]["predict_seconds_per_volume"] or np.inf,
                                     methods[k]["train_seconds_per_iteration"] or np.inf))


def verdict(methods: dict[str, dict], recommended: str) -> dict:
    """Issue 34's thresholds for the recommended REHRSeg row, as they are."""
    row, baselines = methods[recommended], [k for k in BASELINES if k in methods]
    sr = methods.get("sr_nnunet")
    checks = {
        "class_mean_vs_sr_nnunet_plus_0.01": sr is not None and
        row["per_class_mean_hr_dice"] >= sr["per_class_mean_hr_dice"] + 0.01,
        "class_mean_vs_other_baselines_plus_0.02": all(
            row["per_class_mean_hr_dice"] >= methods[k]["per_class_mean_hr_dice"] + 0.02
            for k in baselines if k != "sr_nnunet"),
        "whole_tumour_hd95_le_every_baseline": all(row["hr_hd95"] <= methods[k]["hr_hd95"] for k in baselines),
        "predict_seconds_le_sr_nnunet": sr is not None and None not in (
            row["predict_seconds_per_volume"], sr["predict_seconds_per_volume"])
        and row["predict_seconds_per_volume"] <= sr["predict_seconds_per_volume"],
    }
    return {"checks": checks, "all_met": all(checks.values()), "baselines": baselines}


def merge(folds_folder: str, committed: list[str], results: str, replace: tuple[str, ...] = ()) -> dict:
    folds = read_folds(folds_folder)
    replaced: dict = {}
    rows = rows_per_case(folds, committed, results, replace, replaced)
    methods = {key: summary(per_case) for key, per_case in rows.items()}
    cases = sorted(folds)
    recommended = recommend(methods)
    ensemble_of = {members[0]: key for key, members in ENSEMBLES.items()}
    if recommended and ensemble_of.get(recommended) in methods:
        methods[CHOSEN_ENSEMBLE] = {**methods[ensemble_of[recommended]], "ensembled": ensemble_of[recommended]}
    for key in [k for k in methods if k in ENSEMBLES]:
        methods.pop(key)
    deciding = {key: methods[key] for key in DECIDING if key in methods}
    complete = [key for key in DECIDING if key in methods and
                (key == "oracle_hr" or set(methods[key]["per_case"]) >= set(cases))]
    return {"test_cases": cases, "recommended": recommended,
            "methods": deciding,
            "complete": complete, "pending": [key for key in DECIDING if key not in complete],
            "spearman_lr_vs_hr_class_mean": spearman_per_case(deciding),
            "verdict": verdict(deciding, recommended) if recommended in deciding else None,
            "replaced": replaced,
            "folds": {case: [{"path": fold["path"], "commit": fold.get("commit"), "command": fold.get("command"),
                              "budget": fold.get("budget"), "pending": fold.get("pending"),
                              "methods": sorted(fold["methods"])} for fold in parts]
                      for case, parts in folds.items()}}


def dice_cell(row: dict, name: str) -> str:
    """HR Dice mean ± std over test cases (the std only where there are several) of one class or region."""
    dice = row["hr"][name]["dice"]
    return f"{dice['mean']:.3f}" + (f" ± {dice['std']:.3f}" if dice["cases"] > 1 else "")


def table_cell(row: dict, name: str) -> str:
    """Dice mean ± std over test cases (HD95 mean, mm) of one class or region, "–" where never present."""
    if name not in row["hr"]:
        return "–"
    hd95 = row["hr"][name].get("hd95", {"mean": float("nan")})
    return f"{dice_cell(row, name)} ({hd95['mean']:.1f})"


def number(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(result: dict) -> str:
    """The docs' table: HR Dice mean ± std (HD95 mm) per class and region, per-case class means, costs."""
    names = [*CLASSES, "whole_tumour", "tumour_core"]
    cases = result["test_cases"]
    lines = ["| method | " + " | ".join(names) + " | class mean | " + " | ".join(cases)
             + " | LR-grid class mean | train s/it alone | predict s/volume | peak RSS MB |",
             "|---" * (len(names) + len(cases) + 6) + "|"]
    for key, row in result["methods"].items():
        per_case = [number(row["per_case"][c]["hr_class_mean"], 3) if c in row["per_case"] else "–" for c in cases]
        lines.append(f"| {key} | " + " | ".join(table_cell(row, n) for n in names)
                     + f" | {row['per_class_mean_hr_dice']:.3f} | " + " | ".join(per_case)
                     + f" | {row['per_class_mean_lr_dice']:.3f} | {number(row['train_seconds_per_iteration'], 2)} | "
                     f"{number(row['predict_seconds_per_volume'], 0)} | {number(row['peak_rss_mb'], 0)} |")
    return "\n".join(lines)


#: how a user runs each path (README, "Which path should I use?")
HOW = {
    "sr_nnunet": "`rehrseg_make_pseudohr`, stock `nnUNetv2_train`; `rehrseg_super_resolve` + `nnUNetv2_predict`",
    "sr_nnunet_labelFree": "as `sr_nnunet`, trained on images super-resolved without the LR label",
    "rehrseg_paper": "`-tr {trainer}`, fine-tuned from the LR nnU-Net; `rehrseg_predict`",
    "rehrseg_hrStem": "`-tr {trainer}`, fine-tuned from the LR nnU-Net; `rehrseg_predict`",
    CHOSEN_ENSEMBLE: "mean of the HR probabilities of {ensembled} and `sr_nnunet`",
    "interp_nnunet": "stock nnU-Net on cubic-upsampled images and shape-based labels",
    "nnunet_lr_upsampled_sdf": "stock nnU-Net on the thick slices, shape-based upsampling",
    "oracle_hr": "stock nnU-Net on the true 1 mm images and labels (the ceiling)",
}


def trainer_to_type(key: str) -> str:
    """The ``-tr`` a user types for a REHRSeg row: ``REHRSegTrainer`` for the design it ships, else the variant."""
    return "REHRSegTrainer" if key == recommended_key() else REHRSEG_TRAINERS.get(key, "")


def readme_order(result: dict) -> list[str]:
    """The README tables' rows: best HR class mean first, the oracle last."""
    return sorted(result["methods"], key=lambda k: (k == "oracle_hr", -result["methods"][k]["per_class_mean_hr_dice"]))


def readme_table(result: dict) -> str:
    """The README's table: quality (HR class mean ± std over test cases, per case, whole-tumour Dice and HD95) and
    cost (2 CPU cores, each timed alone) of every path, best class mean first, the oracle last."""
    cases = result["test_cases"]
    lines = ["| path | how | HR class mean | " + " | ".join(cases) + " | whole tumour Dice (HD95 mm) | "
             "train s/iteration | predict s/volume |", "|---" * (len(cases) + 6) + "|"]
    for key in readme_order(result):
        row = result["methods"][key]
        name = f"**{key}**" if key == result.get("recommended") else key
        member = ENSEMBLES[row["ensembled"]][0] if row.get("ensembled") in ENSEMBLES else None  # its REHRSeg row
        how = HOW.get(key, "").format(ensembled=f"`{member}`", trainer=trainer_to_type(key))
        mean = row["per_class_mean_hr_dice"]
        spread = np.std([c["hr_class_mean"] for c in row["per_case"].values() if c["hr_class_mean"] is not None])
        per_case = [number(row["per_case"][c]["hr_class_mean"], 3) if c in row["per_case"] else "–" for c in cases]
        lines.append(f"| {name} | {how} | {mean:.3f} ± {spread:.3f} | " + " | ".join(per_case)
                     + f" | {row['hr_dice']:.3f} ({row['hr_hd95']:.1f})"
                     f" | {number(row['train_seconds_per_iteration'], 2)}"
                     f" | {number(row['predict_seconds_per_volume'], 0)} |")
    return "\n".join(lines)


def readme_class_table(result: dict) -> str:
    """The README's per-class table: HR Dice mean ± std over test cases of every class and of the whole tumour (its
    HD95 mm) and tumour core, in the order of :func:`readme_table`, so that no class hides behind the mean."""
    regions = [*CLASSES, "whole_tumour", "tumour_core"]
    lines = ["| path | " + " | ".join(name.replace("_", " ") for name in regions) + " |",
             "|---" * (len(regions) + 1) + "|"]
    for key in readme_order(result):
        row = result["methods"][key]
        cells = [table_cell(row, name) if name == "whole_tumour" else dice_cell(row, name) for name in regions]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_tables(result: dict) -> str:
    """What ``--readme`` writes between the README's markers: quality and cost, then every class."""
    return (readme_table(result) + "\n\nHR Dice per class, mean ± std over the test cases (whole tumour: HD95 mm in "
            "brackets):\n\n" + readme_class_table(result))


#: the lines around the table in README.md that ``--readme`` rewrites
README_MARKERS = ("<!-- table: python benchmarks/brats_4x_cv.py --readme README.md -->", "<!-- end of table -->")


def with_readme_table(readme: str, table: str) -> str:
    """``readme`` with the text between :data:`README_MARKERS` replaced by ``table``.

    Raises:
        ValueError: where the markers are not there once each, in order.
    """
    start, end = README_MARKERS
    if readme.count(start) != 1 or readme.count(end) != 1 or readme.index(start) > readme.index(end):
        raise ValueError(f"README.md should hold the line '{start}', then the table, then '{end}', once each; add "
                         "them to the section 'Which path should I use?'.")
    before, rest = readme.split(start)
    return before + start + "\n" + table + "\n" + end + rest.split(end, 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    results = os.path.join(HERE, "results")
    parser.add_argument("--folds", default=os.path.join(results, "brats_4x_cv"), help="folder of the fold JSONs")
    parser.add_argument("--committed", nargs="*", default=DEFAULT_COMMITTED, metavar="CASE:KEY=FILE",
                        help="rows taken from an earlier results JSON (in benchmarks/results) where no fold ran them")
    parser.add_argument("--replace", nargs="*", default=DEFAULT_REPLACED, metavar="CASE:KEY=FILE",
                        help="rows taken from an earlier results JSON in place of the fold's own (kept under "
                        "'replaced')")
    parser.add_argument("--output", default=os.path.join(results, "brats_4x_cv.json"))
    parser.add_argument("--readme", metavar="README.md", help="also rewrite the table of this README between "
                        "its markers (README_MARKERS)")
    args = parser.parse_args()
    if not glob.glob(os.path.join(args.folds, "*.json")):
        sys.exit(f"no fold JSON in {args.folds}; run benchmarks/decision_run.sh and copy each finished fold there.")
    try:
        result = merge(args.folds, args.committed, results, args.replace)
    except ValueError as error:
        sys.exit(str(error))
    from rehrseg_nnunet.file_writing import write_json_atomically
    write_json_atomically(args.output, result)
    print(markdown(result))
    print("\nREADME (Which path should I use?):\n" + readme_tables(result))
    print("\nSpearman rho (LR-grid vs HR class mean, per test case):",
          {c: (None if v["rho"] is None else round(v["rho"], 3))
           for c, v in result["spearman_lr_vs_hr_class_mean"].items()})
    for case, keys in result["replaced"].items():
        for key, row in keys.items():
            print(f"{case} {key}: the fold's own row (HR class mean {number(row['hr_class_mean'], 3)}) replaced by "
                  f"{row['replaced_by'].split(' ')[0]}")
    print(f"recommended: {result['recommended']}; verdict: {json.dumps(result['verdict'])}")
    print(f"pending: {result['pending']}; wrote {args.output}")
    if args.readme:
        with open(args.readme) as handle:
            readme = handle.read()
        try:
            readme = with_readme_table(readme, readme_tables(result))
        except ValueError as error:
            sys.exit(f"{args.readme}: {error}")
        with open(args.readme, "w") as handle:
            handle.write(readme)
        print(f"rewrote the tables of {args.readme}")


if __name__ == "__main__":
    main()
