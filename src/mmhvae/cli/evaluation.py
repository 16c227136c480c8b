"""The evaluation verbs: `evaluate` model files (or cross-validate methods), `ablate` (Table II) and `report`
(a results page such as the phantom benchmark)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmhvae.cli.common import ALL_METHODS, add_no_lpips, add_overwrite, add_temperature
from mmhvae.errors import InputError, refuse_to_overwrite


def run_crossvalidation(args: argparse.Namespace) -> int:
    """`evaluate --folds K`: train every --methods on each fold and score the pooled test folds."""
    from mmhvae.experiments.studies import crossvalidate

    if args.model:
        raise InputError("--folds trains its own models: give --methods (and --config), not --model")
    if args.folds < 2:
        raise InputError(f"--folds must be at least 2, got {args.folds}")
    refuse_to_overwrite(args.out, args.overwrite, exists=(args.out / "metrics.csv").exists(),
                        problem="the output folder already has results")
    crossvalidate(args.data, args.out, args.config, args.methods.split(","), args.folds, args.max_steps,
                  args.temperature, with_lpips=not args.no_lpips, samples=args.samples, seeds=args.seeds,
                  correction=args.correction)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    if args.folds is not None:
        return run_crossvalidation(args)
    from mmhvae.evaluation.brasyn import evaluate_brasyn
    from mmhvae.evaluation.evaluate import evaluate

    if not args.model:
        raise InputError("give --model (model files to evaluate) or --folds K (train and evaluate K folds)")
    all_subsets, brasyn = args.protocol in ("all-subsets", "both"), args.protocol in ("brasyn", "both")
    # Both refusals before either protocol starts, so that an existing result never leaves the other half-done.
    if all_subsets:
        refuse_to_overwrite(args.out, args.overwrite, exists=(args.out / "metrics.csv").exists(),
                            problem="the output folder already has results")
    if brasyn:
        refuse_to_overwrite(args.out, args.overwrite, exists=(args.out / "brasyn.csv").exists(),
                            problem="the output folder already has BraSyn results")
    if all_subsets:
        evaluate(args.model, args.data, args.out, temperature=args.temperature, with_lpips=not args.no_lpips,
                 overwrite=args.overwrite, mean_image_from=args.mean_image_from, samples=args.samples,
                 correction=args.correction, level=args.level)
    if brasyn:
        evaluate_brasyn(args.model, args.data, args.out, temperature=args.temperature, samples=args.samples,
                        overwrite=args.overwrite)
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from mmhvae.experiments.studies import ablate

    ablate(args.data, args.out, args.config, args.max_steps, test_data=args.test_data, folds=args.folds,
           fold=args.fold, temperature=args.temperature, with_lpips=not args.no_lpips, seeds=args.seeds,
           correction=args.correction)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from mmhvae.experiments.phantom_benchmark import PhantomBenchmark, phantom_benchmark

    settings = PhantomBenchmark(config=args.config, steps=args.steps, tuning_steps=args.tuning_steps,
                                train_subjects=args.train_subjects,
                                train_seed=args.train_seed, test_subjects=args.test_subjects,
                                test_seed=args.test_seed, size=args.size, with_lpips=not args.no_lpips,
                                ablation=not args.no_ablation, seeds=args.seeds,
                                learning_rates=learning_rates(args.learning_rates),
                                methods=tuple(args.methods.split(",")))
    phantom_benchmark(args.work, args.out, settings)
    return 0


def learning_rates(text: str) -> tuple[float, ...]:
    """`--learning-rates`: comma-separated rates, or "recipe" (every method at its own recipe's rate)."""
    if text.strip() == "recipe":
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--learning-rates: give comma-separated numbers or 'recipe', got {text!r}") from None


def add_statistics(parser: argparse.ArgumentParser, seeds: int = 1, correction: bool = True) -> None:
    """--seeds and --correction: training seeds per method, and the multiple-comparison correction (the report
    page always corrects with Holm's)."""
    parser.add_argument("--seeds", type=int, default=seeds,
                        help=f"train each method with N seeds; tables give the mean over seeds and the between-seed"
                             f" sd (default {seeds})")
    if not correction:
        return
    parser.add_argument("--correction", default="holm", choices=["holm", "bonferroni"],
                        help="multiple-comparison correction of the paired tests over subjects (default holm)")


def add_evaluate(verbs: argparse._SubParsersAction) -> None:
    evaluate = verbs.add_parser("evaluate", help="PSNR/SSIM/LPIPS for every input subset and target")
    evaluate.add_argument("--model", type=Path, nargs="+",
                          help="model file(s) or run folder(s); several are compared in one table")
    evaluate.add_argument("--data", required=True, type=Path, help="test subjects (with targets or tissue maps)")
    evaluate.add_argument("--out", required=True, type=Path,
                          help="writes metrics.csv and table.md (all subsets), brasyn.csv and brasyn.md (BraSyn)")
    evaluate.add_argument("--protocol", default="all-subsets", choices=["all-subsets", "brasyn", "both"],
                          help="all-subsets: every input subset x target (the paper's Table I, default); brasyn: "
                               "each subject missing one modality, SSIM/PSNR in the brain after BraSyn's "
                               "normalisation; both")
    add_temperature(evaluate)
    evaluate.add_argument("--samples", type=int, default=1,
                          help="score the mean of K samples per prediction (as predict --samples K writes) and, "
                               "for K > 1, the uncertainty maps (uncertainty.csv)")
    evaluate.add_argument("--level", type=float, default=0.9, help="with --samples: the interval's level")
    add_no_lpips(evaluate)
    add_overwrite(evaluate, help="replace existing results")
    evaluate.add_argument("--mean-image-from", type=Path, default=None,
                          help="training data folder: add the mean-image baseline computed on it")
    evaluate.add_argument("--folds", type=int, default=None,
                          help="instead of --model: K-fold cross-validation on --data, training every --methods "
                               "on each fold (stratified by missingness pattern) and pooling the test folds")
    evaluate.add_argument("--methods", default=ALL_METHODS,
                          help="with --folds: comma-separated methods to train and compare")
    evaluate.add_argument("--config", default="tiny", help="with --folds: tiny, paper or a YAML file")
    evaluate.add_argument("--max-steps", type=int, default=None, help="with --folds: training steps per model")
    add_statistics(evaluate)
    evaluate.set_defaults(func=run_evaluate)


def add_ablate(verbs: argparse._SubParsersAction) -> None:
    ablate = verbs.add_parser("ablate", help="Table II: latent groups, fusion and GAN ablations on one fold")
    ablate.add_argument("--data", required=True, type=Path, help="training data folder")
    ablate.add_argument("--out", required=True, type=Path, help="writes runs/, ablation.md and ablation.csv")
    ablate.add_argument("--config", default="tiny", help="tiny, paper or a YAML file")
    ablate.add_argument("--max-steps", type=int, default=None, help="training steps of every variant (equal budgets)")
    ablate.add_argument("--test-data", type=Path, default=None,
                        help="held-out test folder (then all of --data trains); default: one fold of --data")
    ablate.add_argument("--folds", type=int, default=3, help="folds of --data when no --test-data (default 3)")
    ablate.add_argument("--fold", type=int, default=0, help="the test fold (default 0)")
    add_temperature(ablate)
    add_no_lpips(ablate, help="skip LPIPS")
    add_statistics(ablate)
    ablate.set_defaults(func=run_ablate)


def add_report(verbs: argparse._SubParsersAction) -> None:
    report = verbs.add_parser("report", help="generate a results page (reports/), e.g. the phantom benchmark")
    report.add_argument("page", choices=["phantom-benchmark"], help="which page")
    report.add_argument("--work", required=True, type=Path, help="folder for cohorts, runs and scores (reused)")
    report.add_argument("--out", type=Path, default=Path("reports/phantom-benchmark.md"), help="the page to write")
    report.add_argument("--config", default="tiny", help="network and training preset or YAML file")
    report.add_argument("--steps", type=int, default=300,
                        help="the cap on every model's training steps (equal budgets; early stopping may end sooner)")
    report.add_argument("--tuning-steps", type=int, default=0,
                        help="the cap of the learning-rate sweep's runs (default 0: --steps)")
    report.add_argument("--train-subjects", type=int, default=48)
    report.add_argument("--train-seed", type=int, default=0)
    report.add_argument("--test-subjects", type=int, default=16)
    report.add_argument("--test-seed", type=int, default=5000)
    report.add_argument("--size", type=int, default=64, help="in-plane size of the simulated phantom volumes")
    report.add_argument("--learning-rates", default="5e-4,2e-3,5e-3,1e-2,2e-2",
                        help="learning rates tried per method, chosen on the validation split, or 'recipe' "
                             "(default 5e-4,2e-3,5e-3,1e-2,2e-2)")
    add_no_lpips(report, help="skip LPIPS")
    report.add_argument("--no-ablation", action="store_true",
                        help="Table I methods only (no Table II variants): for larger budgets")
    report.add_argument("--methods", default=ALL_METHODS,
                        help="the Table I methods to train and compare (mmhvae always; default: every method)")
    add_statistics(report, seeds=3, correction=False)
    report.set_defaults(func=run_report)


def run_calibrate(args: argparse.Namespace) -> int:
    from mmhvae.evaluation.calibrate import calibrate

    calibrate(args.model, args.data, args.out, levels=levels(args.levels), samples=args.samples,
              temperature=args.temperature, overwrite=args.overwrite)
    return 0


def levels(text: str) -> tuple[float, ...]:
    """`--levels`: comma-separated interval levels."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--levels: give comma-separated numbers between 0 and 1, got {text!r}") from None


def add_calibrate(verbs: argparse._SubParsersAction) -> None:
    calibrate = verbs.add_parser("calibrate", help="fit calibrated uncertainty intervals on held-out subjects")
    calibrate.add_argument("--model", required=True, type=Path, help="model file or run folder")
    calibrate.add_argument("--data", required=True, type=Path,
                           help="calibration subjects with targets, seen neither in training nor in testing")
    calibrate.add_argument("--out", required=True, type=Path, help="the calibrated model file to write")
    calibrate.add_argument("--levels", default="0.9", help="interval levels, comma-separated (default 0.9)")
    calibrate.add_argument("--samples", type=int, default=8, help="samples per prediction (default 8)")
    add_temperature(calibrate, help="sampling temperature the intervals are for (default 0.5)")
    add_overwrite(calibrate, help="replace an existing file at --out (also the model file itself)")
    calibrate.set_defaults(func=run_calibrate)


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    """Register `evaluate`, `calibrate`, `ablate` and `report` on the verbs of the `mmhvae` parser."""
    add_evaluate(verbs)
    add_calibrate(verbs)
    add_ablate(verbs)
    add_report(verbs)
