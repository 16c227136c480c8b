"""The command line: exit codes and one-line errors (design.md)."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import numpy as np
import pytest

from mmhvae.cli.common import show_warnings_to_users
from mmhvae.cli.main import main

from conftest import brain_like, huge_header_file, make_subject, write_nifti


def run(*args):
    """Run the real console entry point in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "mmhvae.cli", *map(str, args)], capture_output=True, text=True)


def test_check_lists_subjects_and_patterns(tmp_path, capsys):
    make_subject(tmp_path / "a", ("us", "t2", "cet1"))
    make_subject(tmp_path / "b", ("us",))
    assert main(["check", "--data", str(tmp_path), "--modalities", "us,t2,t1c,flair"]) == 0
    out = capsys.readouterr().out
    assert "r=1110" in out and "r=1000" in out and "2 subjects" in out


def test_check_takes_the_modalities_found_unless_told(tmp_path, capsys):
    make_subject(tmp_path / "a", ("us", "t2", "cet1"))
    make_subject(tmp_path / "b", ("us",))
    assert main(["check", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"modalities: us,t2,t1c (found in {tmp_path}; choose others with --modalities)\n")
    assert "r=111 " in out and "r=100 " in out and "2 subjects, modalities us,t2,t1c" in out
    assert main(["check", "--data", str(tmp_path), "--modalities", "t1,pd"]) == 2
    assert "its subjects have us, t2, t1c and none of t1, pd (from --modalities)" in capsys.readouterr().err


def bad_inputs(tmp_path):
    """Each case: (argv, text the one-line error must contain)."""
    cases = {}
    cases["missing folder"] = (["--data", tmp_path / "nope"], "does not exist")
    (tmp_path / "empty").mkdir()
    cases["empty folder"] = (["--data", tmp_path / "empty"], "no subjects found")
    truncated = write_nifti(tmp_path / "trunc" / "s" / "t2.nii.gz", brain_like((30, 30, 12)))
    truncated.write_bytes(truncated.read_bytes()[:200])
    cases["truncated"] = (["--data", tmp_path / "trunc"], "t2.nii.gz: cannot read as NIfTI")
    text = tmp_path / "text" / "s" / "us.nii.gz"
    text.parent.mkdir(parents=True)
    text.write_text("hello")
    cases["text file"] = (["--data", tmp_path / "text"], "us.nii.gz: cannot read as NIfTI")
    write_nifti(tmp_path / "flat2d" / "s" / "us.nii.gz", np.ones((5, 5, 1, 2)))
    cases["4D"] = (["--data", tmp_path / "flat2d"], "us.nii.gz: expected a 3D volume")
    nan = brain_like()
    nan[2, 2, 2] = np.nan
    write_nifti(tmp_path / "nan" / "s" / "flair.nii.gz", nan)
    cases["NaN"] = (["--data", tmp_path / "nan"], "flair.nii.gz: 1 voxels are NaN")
    make_subject(tmp_path / "unknown" / "s", ("us",))
    write_nifti(tmp_path / "unknown" / "s" / "adc.nii.gz", brain_like())
    cases["unknown name"] = (["--data", tmp_path / "unknown"], "adc.nii.gz: unknown modality name")
    write_nifti(tmp_path / "grid" / "s" / "us.nii.gz", brain_like((20, 18, 6)))
    write_nifti(tmp_path / "grid" / "s" / "t2.nii.gz", brain_like((20, 18, 5)))
    cases["mismatched grid"] = (["--data", tmp_path / "grid"], "t2.nii.gz: subject 's': shape")
    huge_header_file(tmp_path / "huge" / "s" / "us.nii")
    cases["grid too large for memory"] = (["--data", tmp_path / "huge"],
                                          "us.nii: subject 's' (1 images of shape (20000, 20000, 400)) needs about")
    cases["unknown modality flag"] = (["--data", tmp_path / "grid", "--modalities", "us,adc"], "unknown modality 'adc'")
    return cases


def test_bad_input_gives_exit_2_and_one_line(tmp_path):
    for name, (argv, expected) in bad_inputs(tmp_path).items():
        result = run("check", *argv)
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (name, result.stderr)
        assert "Traceback" not in result.stderr


def test_nan_to_num_and_resample_to_flags(tmp_path):
    nan = brain_like()
    nan[2, 2, 2] = np.nan
    write_nifti(tmp_path / "s" / "flair.nii.gz", nan)
    write_nifti(tmp_path / "s" / "us.nii.gz", brain_like((22, 18, 6)))
    assert run("check", "--data", tmp_path, "--nan-to-num").returncode == 2  # grids still differ
    result = run("check", "--data", tmp_path, "--nan-to-num", "--resample-to", "us")
    assert result.returncode == 0, result.stderr


def test_simulate_refuses_to_overwrite_a_cohort(tmp_path):
    (tmp_path / "cohort.json").write_text("{}")
    result = run("simulate", "--out", tmp_path, "--subjects", 1)
    assert result.returncode == 2 and "already holds a cohort" in result.stderr


def test_warnings_name_their_library_and_hide_its_deprecation_notices(capsys):
    library = "/venv/lib/python3.11/site-packages/lightning/pytorch/utilities/_pytree.py"
    ours = "/work/src/mmhvae/train.py"
    with warnings.catch_warnings():
        show_warnings_to_users()
        warnings.warn_explicit("LeafSpec is deprecated", DeprecationWarning, library, 21,
                               module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit("no GPU found", UserWarning, library, 30, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit("old option", FutureWarning, ours, 5, module="mmhvae.train")
        warnings.warn_explicit("mmhvae_extra is not mmhvae", FutureWarning, library, 7, module="mmhvae_extra.x")
    assert capsys.readouterr().err.splitlines() == [
        "mmhvae: warning (from lightning): no GPU found",
        "mmhvae: warning: old option"]


def test_evaluate_folds_refuses_to_overwrite_results(tmp_path, capsys):
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "metrics.csv").write_text("")
    assert main(["evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "cv"), "--folds", "2"]) == 2
    assert capsys.readouterr().err.strip() == \
        f"mmhvae: error: {tmp_path / 'cv'}: the output folder already has results (use --overwrite)"


def test_help_does_not_import_torch():
    # `mmhvae --help` builds every verb's parser; torch would cost seconds before the first line appears.
    code = ("import contextlib, io, sys\n"
            "from mmhvae.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as help_text:\n"
            "    try:\n"
            "        main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "print('usage: mmhvae' in help_text.getvalue(), 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "False"]


@pytest.fixture
def mmhvae_logger():
    """The `mmhvae` logger, with its handlers and level restored after the test."""
    logger = logging.getLogger("mmhvae")
    handlers, level = list(logger.handlers), logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_progress_messages_appear_on_stdout_once_however_often_main_runs(tmp_path, capsys, mmhvae_logger):
    make_subject(tmp_path / "a", ("us",))
    assert main(["check", "--data", str(tmp_path)]) == 0
    assert main(["check", "--data", str(tmp_path)]) == 0  # a second call in the same process
    capsys.readouterr()
    library = logging.getLogger("mmhvae.inference.predict")
    library.info("case1: inputs us -> t2")
    library.debug("a detail for developers")
    assert capsys.readouterr().out == "case1: inputs us -> t2\n"
    assert mmhvae_logger.propagate


def test_report_learning_rate_default_is_the_benchmarks_grid():
    from mmhvae.cli.evaluation import learning_rates
    from mmhvae.cli.main import build_parser
    from mmhvae.experiments.phantom_benchmark import LEARNING_RATES

    args = build_parser().parse_args(["report", "phantom-benchmark", "--work", "w", "--out", "p.md"])
    assert learning_rates(args.learning_rates) == LEARNING_RATES
