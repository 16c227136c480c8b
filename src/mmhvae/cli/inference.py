"""The inference verbs: `predict` every modality from any subset of a subject's images, run the `demo`, and
`import-authors` (their released network as one of our model files)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmhvae.cli.common import add_device, add_model_file, add_nan_to_num, add_overwrite, add_temperature


def run_predict(args: argparse.Namespace) -> int:
    from mmhvae.inference.predict import predict

    predict(args.model, args.input, args.out, temperature=args.temperature, samples=args.samples,
            device=args.device, inputs=args.inputs, overwrite=args.overwrite, resample_to=args.resample_to,
            nan_to_num=args.nan_to_num, strict=args.strict, precision=args.precision,
            compile_network=args.compile, all_subsets=args.all_subsets, level=args.level)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from mmhvae.experiments.demo import run_demo

    run_demo(args.out, args.model)
    return 0


def run_import_authors(args: argparse.Namespace) -> int:
    from mmhvae.inference.authors_checkpoint import import_authors

    path = import_authors(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"model file: {path} (the authors' network; predict with --model {path}, "
          f"their temperature was 0.7, ours is 0.5)")
    return 0


def add_predict(verbs: argparse._SubParsersAction) -> None:
    predict = verbs.add_parser("predict", help="every modality from any subset of a subject's images")
    add_model_file(predict)
    predict.add_argument("--input", required=True, type=Path, help="one subject folder or a data folder")
    predict.add_argument("--out", required=True, type=Path, help="writes OUT/<subject>/<modality>.nii.gz")
    add_temperature(predict, help="posterior std scale (default 0.5)")
    predict.add_argument("--samples", type=int, default=1,
                         help="K samples: mean and <mod>_std.nii.gz maps (with a calibrated model also the "
                              "interval, <mod>_lo/_hi.nii.gz)")
    predict.add_argument("--level", type=float, default=0.9,
                         help="level of the calibrated interval (one the model was calibrated at; default 0.9)")
    add_device(predict)
    predict.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                         help="network precision: auto = bf16 autocast on CUDA, float32 on CPU")
    predict.add_argument("--compile", action="store_true",
                         help="torch.compile the network first (needs a C++ compiler; pays off on GPUs and "
                              "over folders of volumes)")
    predict.add_argument("--inputs", default=None, help="use only these present modalities, e.g. t2,us")
    predict.add_argument("--all-subsets", action="store_true",
                         help="predict from every non-empty subset of the inputs in one batched run: "
                              "OUT/<subject>/<subset>/<modality>.nii.gz")
    add_overwrite(predict)
    predict.add_argument("--resample-to", metavar="MOD", default=None, help="resample onto this modality's grid")
    add_nan_to_num(predict)
    predict.add_argument("--strict", action="store_true",
                         help="refuse subjects with modalities the model was not trained on (default: warn, ignore)")
    predict.set_defaults(func=run_predict)


def add_demo(verbs: argparse._SubParsersAction) -> None:
    demo = verbs.add_parser("demo", help="the main job on the embedded default (see README)")
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    demo.add_argument("--model", type=Path, default=None, help="model file (default: the shipped one)")
    demo.set_defaults(func=run_demo)


def add_import_authors(verbs: argparse._SubParsersAction) -> None:
    authors = verbs.add_parser("import-authors", help="convert the authors' released checkpoint into a model file")
    authors.add_argument("checkpoint", type=Path, help="their state_dict, e.g. CP_main_1000.pth (ReubenDo/MMHVAE)")
    authors.add_argument("--out", required=True, type=Path, help="model file to write, e.g. authors-f0.pt")
    add_overwrite(authors, help="replace an existing model file")
    authors.set_defaults(func=run_import_authors)


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    """Register `predict`, `import-authors` and `demo` on the verbs of the `mmhvae` parser."""
    add_predict(verbs)
    add_import_authors(verbs)
    add_demo(verbs)
