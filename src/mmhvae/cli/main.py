"""The `mmhvae` command: each verb is a thin wrapper over a Python function.

Exit codes (design.md): 0 success; 2 bad input or usage, one line on stderr naming the file and the
problem; 1 unexpected internal error (traceback only with --debug).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from mmhvae import __version__
from mmhvae.allocator import keep_freed_memory
from mmhvae.errors import InputError
from mmhvae.modalities import PAPER_MODALITIES, ModalitySet, subset_label

# Every method of model/registry.py's METHODS (spelt out: importing the registry imports torch, too slow for
# `--help`; a test keeps the two equal).
ALL_METHODS = "mmhvae,mopoe,average,concat-zeros,mmgan,resvit,m2dn"


def _modality_set(text: str) -> ModalitySet:
    try:
        return ModalitySet.parse(text)
    except InputError as exc:  # argparse turns this into a one-line usage error, exit 2
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_check(args: argparse.Namespace) -> int:
    """Discover and load every subject of a data folder; print its missingness pattern and grid."""
    from mmhvae.io.layouts import discover_subjects
    from mmhvae.io.subjects import load_subject

    modalities = args.modalities
    subjects = discover_subjects(args.data)
    patterns: dict[tuple[str, ...], int] = {}
    for files in subjects:
        subject = load_subject(files, modalities, resample_to=args.resample_to, nan_to_num=args.nan_to_num)
        present = subject.present(modalities)
        patterns[present] = patterns.get(present, 0) + 1
        grid = subject.reference
        extras = [name for name in ("seg", "tissue") if getattr(subject, name) is not None]
        extras += [f"targets:{'+'.join(subject.targets)}"] if subject.targets else []
        print(f"{files.name:24s} {files.layout:9s} r={''.join(map(str, subject.indicator(modalities)))} "
              f"{subset_label(present):20s} grid={grid.shape} zooms={tuple(round(z, 3) for z in grid.zooms)} "
              f"{' '.join(extras)}")
    print(f"{len(subjects)} subjects, modalities {','.join(modalities)}; patterns:")
    for present, count in sorted(patterns.items(), key=lambda item: -item[1]):
        print(f"  {subset_label(present):24s} {count}")
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from mmhvae.phantom.cohort import simulate_cohort

    if (args.out / "cohort.json").exists() and not args.overwrite:
        raise InputError("the output folder already holds a cohort (use --overwrite)", args.out)
    simulate_cohort(args.out, subjects=args.subjects, modalities=args.modalities, size=args.size,
                             slices=args.slices, seed=args.seed, missing=args.missing, us_engine=args.us_engine,
                             us_probe=args.us_probe, preview=args.preview, first_index=args.first_index)
    print(f"wrote {args.subjects} subjects to {args.out} (cohort.json records seed and parameters)")
    if args.preview:
        print(f"preview: {args.preview}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from mmhvae.training.trainer import train

    model = train(args.data, args.out, args.config, max_steps=args.max_steps, max_minutes=args.max_minutes,
                  devices=args.devices, nodes=args.nodes, resume=args.resume, accelerator=args.accelerator,
                  progress=not args.no_progress, init_from=args.init_from, method=args.method,
                  vit_weights=args.vit_weights)
    print(f"model file: {model}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from mmhvae.inference.predict import predict

    predict(args.model, args.input, args.out, temperature=args.temperature, samples=args.samples,
            device=args.device, inputs=args.inputs, overwrite=args.overwrite, resample_to=args.resample_to,
            nan_to_num=args.nan_to_num, strict=args.strict, precision=args.precision,
            compile_network=args.compile, all_subsets=args.all_subsets)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    if args.folds is not None:
        from mmhvae.experiments.studies import crossvalidate

        if args.model:
            raise InputError("--folds trains its own models: give --methods (and --config), not --model")
        if args.folds < 2:
            raise InputError(f"--folds must be at least 2, got {args.folds}")
        if (args.out / "metrics.csv").exists() and not args.overwrite:
            raise InputError("the output folder already has results (use --overwrite)", args.out)
        crossvalidate(args.data, args.out, args.config, args.methods.split(","), args.folds, args.max_steps,
                      args.temperature, with_lpips=not args.no_lpips, samples=args.samples)
        return 0
    from mmhvae.evaluation.evaluate import evaluate

    if not args.model:
        raise InputError("give --model (model files to evaluate) or --folds K (train and evaluate K folds)")
    evaluate(args.model, args.data, args.out, temperature=args.temperature, with_lpips=not args.no_lpips,
             overwrite=args.overwrite, mean_image_from=args.mean_image_from, samples=args.samples)
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from mmhvae.experiments.studies import ablate

    ablate(args.data, args.out, args.config, args.max_steps, test_data=args.test_data, folds=args.folds,
           fold=args.fold, temperature=args.temperature, with_lpips=not args.no_lpips)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from mmhvae.experiments.phantom_benchmark import PhantomBenchmark, phantom_benchmark

    settings = PhantomBenchmark(config=args.config, steps=args.steps, train_subjects=args.train_subjects,
                                train_seed=args.train_seed, test_subjects=args.test_subjects,
                                test_seed=args.test_seed, with_lpips=not args.no_lpips,
                                ablation=not args.no_ablation, sensitivity=args.sensitivity,
                                methods=tuple(args.methods.split(",")))
    phantom_benchmark(args.work, args.out, settings)
    return 0


def run_import_authors(args: argparse.Namespace) -> int:
    from mmhvae.inference.authors_checkpoint import import_authors

    path = import_authors(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"model file: {path} (the authors' network; predict with --model {path}, "
          f"their temperature was 0.7, ours is 0.5)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from mmhvae.performance.info import describe

    methods = args.methods.split(",") if args.methods else ()
    if args.model and methods:
        raise InputError("--methods describes networks of a --config; a model file already has its method")
    print(describe(config=args.config, model=args.model, latency=args.latency, methods=methods))
    return 0


def run_benchmark(args: argparse.Namespace) -> int:
    import torch

    from mmhvae.io.files import write_text_atomic
    from mmhvae.performance.benchmark import benchmark, markdown

    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available on this machine")
    report = benchmark(args.configs.split(","), args.methods.split(","), repeats=args.repeats, device=args.device,
                       depth=args.depth, precision=args.precision, compile_network=args.compile,
                       train_batches=tuple(int(b) for b in args.train_batches.split(",") if b))
    print(markdown(report))
    if args.json:
        import json

        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from mmhvae.experiments.demo import run_demo as demo

    demo(args.out, args.model)
    return 0


def run_analyse_latent(args: argparse.Namespace) -> int:
    from mmhvae.experiments.analyses.latent import analyse_latent

    result = analyse_latent(args.model, args.data, args.out, subject=args.subject,
                            slices=None if args.all_slices else args.slices, temperature=args.temperature,
                            pca_pixels=args.pca_pixels, seed=args.seed, device=args.device, overwrite=args.overwrite)
    print("\n".join(f"wrote {path}" for path in result.files))
    return 0


def run_analyse_temperature(args: argparse.Namespace) -> int:
    from mmhvae.experiments.analyses.temperature import analyse_temperature

    result = analyse_temperature(args.model, args.data, args.out, temperatures=args.temperatures.split(","),
                                 pairs=[tuple(p.split(":", 1)) for p in args.pairs.split(",")],
                                 with_lpips=not args.no_lpips, subject=args.subject, samples=args.samples,
                                 seed=args.seed, device=args.device, overwrite=args.overwrite)
    print("\n".join(f"wrote {path}" for path in result.files))
    return 0


def _named_folders(items: Sequence[str]) -> dict[str, Path]:
    folders = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise InputError(f"--test {item!r}: expected NAME=FOLDER, e.g. remind=data/us-test")
        folders[name] = Path(folder)
    return folders


def run_segment(args: argparse.Namespace) -> int:
    from mmhvae.experiments.downstream.segmentation import segmentation_experiment, train_segmentation_network

    options = dict(steps=args.steps, seed=args.seed, temperature=args.temperature, folds=args.folds,
                   batch_size=args.batch_size, learning_rate=args.lr, device=args.device, overwrite=args.overwrite)
    if args.segment_command == "experiment":
        segmentation_experiment(args.model, args.mr_data, _named_folders(args.test),
                                             args.supervised_data, args.out, **options)
        print(f"wrote {args.out / 'table.md'} and {args.out / 'segmentation.csv'}")
    else:
        path = train_segmentation_network(args.data, args.out, model=args.model, **options)
        print(f"segmentation network: {path}")
    return 0


def run_segment_apply(args: argparse.Namespace) -> int:
    from mmhvae.experiments.downstream.segmenter import segment_ultrasound

    print(f"wrote {segment_ultrasound(args.network, args.image, args.out, args.overwrite, args.device)}")
    return 0


def run_register(args: argparse.Namespace) -> int:
    from mmhvae.experiments.downstream.registration import parse_ranges, registration_experiment
    from mmhvae.experiments.downstream.rigid import run_register as registration_run_register

    if args.experiment:
        if args.data is None:
            raise InputError("--experiment needs --data (and --model files to compare)")
        registration_experiment(args.model, args.data, args.out,
                                             parse_ranges(args.ranges), args.displacements,
                                             args.sequences, args.seed, args.temperature, overwrite=args.overwrite,
                                             device=args.device)
        print(f"wrote {args.out / 'registration.md'} and {args.out / 'registration.csv'}")
    else:
        if args.fixed is None or args.moving is None:
            raise InputError("give --fixed and --moving (or --experiment --data DIR --model ...)")
        image, transform = registration_run_register(args.fixed, args.moving, args.out, args.metric, args.fixed_mask,
                                                     args.overwrite)
        print(f"wrote {image} and {transform}")
    return 0


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit 2, like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mmhvae", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mmhvae {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    check = verbs.add_parser("check", help="validate a data folder: subjects, missingness patterns, grids")
    check.add_argument("--data", required=True, type=Path, help="data folder or one subject folder")
    check.add_argument("--modalities", type=_modality_set, default=ModalitySet(PAPER_MODALITIES),
                       help="comma-separated modality keys (default: us,t2,t1c,flair)")
    check.add_argument("--resample-to", metavar="MOD", default=None,
                       help="resample every image onto this modality's grid instead of refusing mismatches")
    check.add_argument("--nan-to-num", action="store_true", help="replace NaN/inf voxels instead of refusing")
    check.set_defaults(func=run_check)

    simulate = verbs.add_parser("simulate", help="write a seeded multimodal brain-tumour phantom cohort")
    simulate.add_argument("--out", required=True, type=Path, help="output data folder (canonical layout)")
    simulate.add_argument("--subjects", type=int, default=20)
    simulate.add_argument("--modalities", default="us,t2,t1c,flair", help="from us,t1,t1c,t2,flair,pd")
    simulate.add_argument("--size", type=int, default=64, help="in-plane grid over 96 mm (64: 1.5 mm, 192: 0.5 mm)")
    simulate.add_argument("--slices", type=int, default=None, help="sweep depth (default 0.75 x size)")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--missing", default="remind", help="remind, complete, or MOD=P,... probabilities")
    simulate.add_argument("--us-engine", default="fast", choices=["fast", "simus"])
    simulate.add_argument("--us-probe", default="default", choices=["default", "alt"])
    simulate.add_argument("--first-index", type=int, default=0, help="index of the first subject (sub-NNN)")
    simulate.add_argument("--preview", type=Path, default=None, help="write a PNG of the first subject")
    simulate.add_argument("--overwrite", action="store_true", help="write into a folder that holds a cohort")
    simulate.set_defaults(func=run_simulate)

    train = verbs.add_parser("train", help="train MMHVAE on a data folder (Algorithm 1)")
    train.add_argument("--data", required=True, type=Path, help="data folder (see README: layouts)")
    train.add_argument("--out", required=True, type=Path, help="run folder: config, logs, checkpoints, model.pt")
    train.add_argument("--config", default="tiny", help="tiny, paper, or a YAML file (default: tiny)")
    train.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    train.add_argument("--max-minutes", type=float, default=None, help="stop after this wall time")
    train.add_argument("--devices", type=int, default=1, help="processes/GPUs per node (DDP when > 1)")
    train.add_argument("--nodes", type=int, default=1, help="number of nodes (DDP)")
    train.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"])
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--init-from", type=Path, default=None,
                       help="start from the weights of this model file (same architecture, or differing only in "
                            "parts train.trainable lists, which start fresh; new optimisers)")
    train.add_argument("--vit-weights", type=Path, default=None,
                       help="ResViT: load its transformer from an ImageNet ViT checkpoint (R50+ViT-B_16.npz or "
                            "ViT-B_16.npz, Google's format) before training")
    # Not argparse choices: the method list lives with the networks (model/registry.py), whose import needs
    # torch; an unknown method is refused by `train` as a one-line input error.
    train.add_argument("--method", default=None,
                       help="mmhvae (default, or the config's train.method) or a baseline: mopoe (L = 1), average, "
                            "concat-zeros (one encoder), mmgan (U-Net GAN), resvit (transformer GAN), m2dn (diffusion)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    train.set_defaults(func=run_train)

    predict = verbs.add_parser("predict", help="every modality from any subset of a subject's images")
    predict.add_argument("--model", required=True, type=Path, help="model file or run folder")
    predict.add_argument("--input", required=True, type=Path, help="one subject folder or a data folder")
    predict.add_argument("--out", required=True, type=Path, help="writes OUT/<subject>/<modality>.nii.gz")
    predict.add_argument("--temperature", type=float, default=0.5, help="posterior std scale (default 0.5)")
    predict.add_argument("--samples", type=int, default=1, help="K samples: mean and <mod>_std.nii.gz maps")
    predict.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    predict.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                         help="network precision: auto = bf16 autocast on CUDA, float32 on CPU")
    predict.add_argument("--compile", action="store_true",
                         help="torch.compile the network first (needs a C++ compiler; pays off on GPUs and "
                              "over folders of volumes)")
    predict.add_argument("--inputs", default=None, help="use only these present modalities, e.g. t2,us")
    predict.add_argument("--all-subsets", action="store_true",
                         help="predict from every non-empty subset of the inputs in one batched run: "
                              "OUT/<subject>/<subset>/<modality>.nii.gz")
    predict.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    predict.add_argument("--resample-to", metavar="MOD", default=None, help="resample onto this modality's grid")
    predict.add_argument("--nan-to-num", action="store_true", help="replace NaN/inf voxels instead of refusing")
    predict.add_argument("--strict", action="store_true",
                         help="refuse subjects with modalities the model was not trained on (default: warn, ignore)")
    predict.set_defaults(func=run_predict)

    evaluate = verbs.add_parser("evaluate", help="PSNR/SSIM/LPIPS for every input subset and target")
    evaluate.add_argument("--model", type=Path, nargs="+",
                          help="model file(s) or run folder(s); several are compared in one table")
    evaluate.add_argument("--data", required=True, type=Path, help="test subjects (with targets or tissue maps)")
    evaluate.add_argument("--out", required=True, type=Path, help="writes metrics.csv and table.md")
    evaluate.add_argument("--temperature", type=float, default=0.5)
    evaluate.add_argument("--samples", type=int, default=1,
                          help="score the mean of K samples per prediction (as predict --samples K writes)")
    evaluate.add_argument("--no-lpips", action="store_true", help="skip LPIPS (the slowest metric)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace existing results")
    evaluate.add_argument("--mean-image-from", type=Path, default=None,
                          help="training data folder: add the mean-image baseline computed on it")
    evaluate.add_argument("--folds", type=int, default=None,
                          help="instead of --model: K-fold cross-validation on --data, training every --methods "
                               "on each fold (stratified by missingness pattern) and pooling the test folds")
    evaluate.add_argument("--methods", default=ALL_METHODS,
                          help="with --folds: comma-separated methods to train and compare")
    evaluate.add_argument("--config", default="tiny", help="with --folds: tiny, paper or a YAML file")
    evaluate.add_argument("--max-steps", type=int, default=None, help="with --folds: training steps per model")
    evaluate.set_defaults(func=run_evaluate)

    ablate = verbs.add_parser("ablate", help="Table II: latent groups, fusion and GAN ablations on one fold")
    ablate.add_argument("--data", required=True, type=Path, help="training data folder")
    ablate.add_argument("--out", required=True, type=Path, help="writes runs/, ablation.md and ablation.csv")
    ablate.add_argument("--config", default="tiny", help="tiny, paper or a YAML file")
    ablate.add_argument("--max-steps", type=int, default=None, help="training steps of every variant (equal budgets)")
    ablate.add_argument("--test-data", type=Path, default=None,
                        help="held-out test folder (then all of --data trains); default: one fold of --data")
    ablate.add_argument("--folds", type=int, default=3, help="folds of --data when no --test-data (default 3)")
    ablate.add_argument("--fold", type=int, default=0, help="the test fold (default 0)")
    ablate.add_argument("--temperature", type=float, default=0.5)
    ablate.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    ablate.set_defaults(func=run_ablate)

    report = verbs.add_parser("report", help="generate a results page (reports/), e.g. the phantom benchmark")
    report.add_argument("page", choices=["phantom-benchmark"], help="which page")
    report.add_argument("--work", required=True, type=Path, help="folder for cohorts, runs and scores (reused)")
    report.add_argument("--out", type=Path, default=Path("reports/phantom-benchmark.md"), help="the page to write")
    report.add_argument("--config", default="tiny", help="network and training preset or YAML file")
    report.add_argument("--steps", type=int, default=300, help="training steps of every model (equal budgets)")
    report.add_argument("--train-subjects", type=int, default=48)
    report.add_argument("--train-seed", type=int, default=0)
    report.add_argument("--test-subjects", type=int, default=8)
    report.add_argument("--test-seed", type=int, default=5000)
    report.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    report.add_argument("--no-ablation", action="store_true",
                        help="Table I methods only (no Table II variants): for larger budgets")
    report.add_argument("--methods", default=ALL_METHODS,
                        help="the Table I methods to train and compare (mmhvae always; default: every method)")
    report.add_argument("--sensitivity", action="store_true",
                        help="also train MM-GAN at MMHVAE's learning rate (a check of the baseline's recipe)")
    report.set_defaults(func=run_report)

    authors = verbs.add_parser("import-authors", help="convert the authors' released checkpoint into a model file")
    authors.add_argument("checkpoint", type=Path, help="their state_dict, e.g. CP_main_1000.pth (ReubenDo/MMHVAE)")
    authors.add_argument("--out", required=True, type=Path, help="model file to write, e.g. authors-f0.pt")
    authors.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    authors.set_defaults(func=run_import_authors)

    info = verbs.add_parser("info", help="modalities, parameter count and MACs per slice")
    source = info.add_mutually_exclusive_group()
    source.add_argument("--config", default=None, help="tiny, paper or a YAML file")
    source.add_argument("--model", default=None, type=Path, nargs="+", help="model file(s) or run folder(s)")
    info.add_argument("--methods", default=None,
                      help="with --config: these methods' networks (default: the config's train.method), e.g. "
                           + ALL_METHODS)
    info.add_argument("--latency", action="store_true", help="also time one forward pass per slice")
    info.set_defaults(func=run_info)

    bench = verbs.add_parser("benchmark", help="parameters, MACs, latency, training step time and memory")
    bench.add_argument("--configs", default="tiny,paper", help="comma-separated presets or YAML files")
    bench.add_argument("--methods", default=ALL_METHODS, help="comma-separated methods")
    bench.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median), after a warm-up")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    bench.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                       help="networks in float32 or under bf16 autocast (the GPU default of predict and train)")
    bench.add_argument("--compile", action="store_true",
                       help="torch.compile the networks that support it (as predict --compile); untimed warm-up")
    bench.add_argument("--depth", type=int, default=32, help="slices of the slab predicted from all 15 subsets")
    bench.add_argument("--train-batches", default="4,16", help="batch sizes of the training-step figures")
    bench.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    bench.set_defaults(func=run_benchmark)

    demo = verbs.add_parser("demo", help="the main job on the embedded default (see README)")
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    demo.add_argument("--model", type=Path, default=None, help="model file (default: the shipped one)")
    demo.set_defaults(func=run_demo)

    analyse = verbs.add_parser("analyse", help="Section 6 analyses: latent alignment (Fig. 4), temperature (Fig. 5)")
    kinds = analyse.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    latent = kinds.add_parser("latent", help="PCA of z_1 from every input subset of one subject (Fig. 4)")
    latent.add_argument("--model", required=True, type=Path, help="model file or run folder")
    latent.add_argument("--data", required=True, type=Path, help="data folder or one subject folder")
    latent.add_argument("--out", required=True, type=Path,
                        help="writes latent_pca.png, latent_similarity.csv and latent.md")
    latent.add_argument("--subject", default=None, help="subject name (default: the one with the most modalities)")
    latent.add_argument("--slices", type=int, default=8, help="central FOV slices analysed")
    latent.add_argument("--all-slices", action="store_true", help="every FOV slice, as in the paper (more memory)")
    latent.add_argument("--temperature", type=float, default=0.0, help="for z_>1 (0: posterior means, deterministic)")
    latent.add_argument("--pca-pixels", type=int, default=10000, help="pixel descriptors drawn to fit the PCA")
    latent.add_argument("--seed", type=int, default=0)
    latent.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    latent.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    latent.set_defaults(func=run_analyse_latent)
    temp = kinds.add_parser("temperature", help="samples and PSNR/SSIM/LPIPS against temperature (Fig. 5)")
    temp.add_argument("--model", required=True, type=Path, help="model file or run folder")
    temp.add_argument("--data", required=True, type=Path, help="test subjects (with targets or tissue maps)")
    temp.add_argument("--out", required=True, type=Path, help="writes temperature_*.png/.csv and temperature.md")
    temp.add_argument("--temperatures", default="0,0.25,0.5,0.75,1", help="comma-separated, each >= 0")
    temp.add_argument("--pairs", default="us:t2,us:t1c", help="comma-separated SOURCE:TARGET; a source may be us+t2")
    temp.add_argument("--subject", default=None, help="subject of the figure (default: the first with every pair)")
    temp.add_argument("--samples", type=int, default=3, help="samples per temperature in the figure")
    temp.add_argument("--seed", type=int, default=0)
    temp.add_argument("--no-lpips", action="store_true", help="skip LPIPS (the slowest metric)")
    temp.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    temp.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    temp.set_defaults(func=run_analyse_temperature)

    segment = verbs.add_parser("segment", help="ultrasound tumour segmentation learnt from synthetic ultrasound "
                                              "(Table IV)")
    segment_kinds = segment.add_subparsers(dest="segment_command", required=True, metavar="COMMAND")
    experiment = segment_kinds.add_parser("experiment", help="one network per synthesis method (+ fully supervised), "
                                                             "scored on labelled ultrasound test sets")
    experiment.add_argument("--model", nargs="+", required=True, type=Path, help="synthesis model files (methods)")
    experiment.add_argument("--mr-data", required=True, type=Path,
                            help="MR cohort with seg.nii.gz (its ultrasound, if any, is ignored)")
    experiment.add_argument("--test", action="append", required=True, metavar="NAME=FOLDER",
                            help="labelled acquired ultrasound test set (repeatable)")
    experiment.add_argument("--supervised-data", type=Path, default=None,
                            help="labelled acquired ultrasound for the fully supervised baseline")
    experiment.add_argument("--out", required=True, type=Path, help="writes table.md, segmentation.csv, networks/")
    trainer = segment_kinds.add_parser("train", help="train one segmentation network file")
    trainer.add_argument("--data", required=True, type=Path, help="labelled ultrasound, or an MR cohort with --model")
    trainer.add_argument("--model", type=Path, default=None,
                         help="train on ultrasound this model synthesises from the MR of --data")
    trainer.add_argument("--out", required=True, type=Path, help="network file (.pt)")
    for parser_ in (experiment, trainer):
        parser_.add_argument("--steps", type=int, default=1000, help="training steps per network")
        parser_.add_argument("--folds", type=int, default=1, help="> 1: an ensemble, one network per fold")
        parser_.add_argument("--batch-size", type=int, default=16)
        parser_.add_argument("--lr", type=float, default=1e-3)
        parser_.add_argument("--temperature", type=float, default=0.5, help="of the ultrasound synthesis")
        parser_.add_argument("--seed", type=int, default=0)
        parser_.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
        parser_.add_argument("--overwrite", action="store_true")
        parser_.set_defaults(func=run_segment)
    apply = segment_kinds.add_parser("apply", help="segment the tumour in one ultrasound volume")
    apply.add_argument("--network", required=True, type=Path, help="a network file from 'segment train/experiment'")
    apply.add_argument("--image", required=True, type=Path, help="ultrasound volume (NIfTI)")
    apply.add_argument("--out", required=True, type=Path, help="mask to write (NIfTI, on the image's grid)")
    apply.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    apply.add_argument("--overwrite", action="store_true")
    apply.set_defaults(func=run_segment_apply)

    register = verbs.add_parser("register", help="rigid MR-ultrasound registration; --experiment: Table III")
    register.add_argument("--fixed", type=Path, help="fixed image (ultrasound or synthetic MR)")
    register.add_argument("--moving", type=Path, help="moving image (pre-operative MR)")
    register.add_argument("--out", required=True, type=Path, help="OUT.nii.gz (+ OUT.tfm); with --experiment a folder")
    register.add_argument("--metric", default="mattes", choices=["mattes", "correlation"],
                          help="single pair: mattes (MR vs US) or correlation (MR vs synthetic MR)")
    register.add_argument("--fixed-mask", type=Path, default=None,
                          help="FOV mask on the fixed grid (default: non-background)")
    register.add_argument("--experiment", action="store_true", help="Table III over --data, comparing --model files")
    register.add_argument("--model", type=Path, nargs="*", default=[], help="with --experiment: synthesis model files")
    register.add_argument("--data", type=Path, default=None, help="with --experiment: test subjects (us + MR)")
    register.add_argument("--ranges", default="0-4,4-8,8-12,12-16", help="median displacement ranges in mm")
    register.add_argument("--displacements", type=int, default=10, help="random displacements per range")
    register.add_argument("--sequences", default="t2,t1c,flair")
    register.add_argument("--seed", type=int, default=0)
    register.add_argument("--temperature", type=float, default=0.5)
    register.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    register.add_argument("--overwrite", action="store_true")
    register.set_defaults(func=run_register)

    return parser


def warning_source(filename: str) -> str:
    """The installed package a warning was raised in ("mmhvae" for ours and for code outside any package)."""
    parts = Path(filename).parts
    for folder in ("site-packages", "dist-packages"):
        if folder in parts[:-1]:
            return parts[parts.index(folder) + 1].removesuffix(".py")
    return "mmhvae"


def print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, like the errors (no source line); a library's warning names the library."""
    source = warning_source(str(filename))
    origin = "" if source == "mmhvae" else f" (from {source})"
    print(f"mmhvae: warning{origin}: {message}", file=sys.stderr)


def show_warnings_to_users() -> None:
    """Our warnings and the libraries' run-time ones, once per place; not the libraries' deprecation notices.

    Those address the developers of the code that calls a library (Lightning calling torch, say), not whoever
    runs `mmhvae`, and they used to appear in every training log as if they were ours.
    """
    warnings.simplefilter("default")
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module=r"mmhvae(\.|$)")
    warnings.showwarning = print_warning


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "resample_to") and args.resample_to:
        from mmhvae.modalities import require_key

        try:
            args.resample_to = require_key(args.resample_to)
        except InputError as exc:
            parser.error(str(exc))
    keep_freed_memory()  # our own process: large CPU tensors reuse freed pages (allocator.py)
    try:
        with warnings.catch_warnings():
            show_warnings_to_users()
            return int(args.func(args) or 0)
    except InputError as exc:
        print(f"mmhvae: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmhvae: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        if isinstance(exc, OSError) and exc.filename is not None:
            # the file system refused a path given to us (an --out inside a file, a read-only folder, a full disk)
            print(f"mmhvae: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"mmhvae: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
