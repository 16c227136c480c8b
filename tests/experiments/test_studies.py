"""Studies: the phantom benchmark page end to end, cross-validation, the ablation study, equal budgets."""

from __future__ import annotations

import csv
import dataclasses
import logging
import re
import shutil

import numpy as np
import pytest

from mmhvae.cli.main import main
from mmhvae.config import load_config
from mmhvae.errors import InputError
from mmhvae.experiments.phantom_benchmark import PhantomBenchmark, phantom_benchmark
from mmhvae.experiments.studies import ablate, crossvalidate
from mmhvae.experiments.variants import PAPER_LATENT_GROUPS, ablation_variants, matching_latent_groups
from mmhvae.modalities import ModalitySet, non_empty_subsets
from mmhvae.model_file import load_model_file
from mmhvae.training.folds import cross_validation_split, fold_subjects

from conftest import SMALL_CONFIG, small_cohort

MODALITIES = ("us", "t2", "t1c", "flair")
STEPS = 2


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "small.yaml"
    path.write_text(SMALL_CONFIG)
    return path


@pytest.fixture(scope="module")
def benchmark_page(tmp_path_factory, small_config):
    """The whole phantom benchmark on a 6-subject training cohort (one validation subject), a few steps per
    model, one seed, every method at its recipe's learning rate."""
    work = tmp_path_factory.mktemp("bench")
    settings = PhantomBenchmark(config=str(small_config), steps=STEPS, train_subjects=6, train_missing="complete",
                                test_subjects=2, size=32, with_lpips=False, seeds=1, learning_rates=())
    page = phantom_benchmark(work / "work", work / "page.md", settings)
    return work, page, settings


def mmhvae_output(caplog) -> str:
    """What the command line shows on stdout: the messages of the mmhvae loggers, one a line."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.split(".")[0] == "mmhvae")


def table_rows(text: str, title: str) -> list[list[str]]:
    """Cells of the Markdown table that follows the heading `title`."""
    section = text.split(title, 1)[1]
    lines = [line for line in section.split("\n\n")[1].splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_the_benchmark_page_has_every_method_input_combination_and_target_without_nan(benchmark_page):
    work, page, _ = benchmark_page
    text = page.read_text()
    rows = table_rows(text, "## Table I analogue")
    subsets = {"+".join(s) for s in non_empty_subsets(MODALITIES)}
    for method in ("mmhvae", "mopoe", "average", "concat-zeros", "mmgan", "resvit", "m2dn", "mean-image"):
        mine = [r for r in rows if r[0] == method]
        assert {r[1] for r in mine} == subsets, method
        for r in mine:
            assert len(r) == 2 + 2 * len(MODALITIES) and all(re.search(r"\d", c) for c in r[2:]), r
    # MHVAE [29] is scored on its pair only: inputs within us and t2, targets us and t2.
    assert {r[1] for r in rows if r[0] == "mhvae"} == {"us", "t2", "us+t2"}
    assert "## MMHVAE against MHVAE [29] on its pair" in text
    assert "nan" not in text.lower()
    assert (work / "page-fig3.png").stat().st_size > 1000 and (work / "page-curves.png").stat().st_size > 1000


MODELS = 12  # 8 methods + L=2, L=3, no GAN + MMHVAE with the previous KL normalisation


def test_every_model_of_the_page_had_the_same_budget(benchmark_page):
    work, _, _ = benchmark_page
    models = sorted((work / "work" / "runs").glob("*/model.pt"))
    assert len(models) == MODELS
    assert {load_model_file(m).meta["steps"] for m in models} == {STEPS}
    sampling = {load_model_file(m).meta["config"]["train"]["subset_sampling"] for m in models}
    assert sampling == {"mixture"}  # the same p_alpha for every method


def test_the_page_states_the_orderings_from_its_own_numbers(benchmark_page):
    _, page, _ = benchmark_page
    text = page.read_text()
    assert "The paper's Table I ranks MMHVAE above every baseline" in text and "mean-image" in text
    differences = table_rows(text, "## Paired differences")
    assert {r[2] for r in differences} >= {"mopoe", "average", "concat-zeros", "mmgan", "resvit", "m2dn"}
    assert all(r[-1].startswith("no claim") for r in differences)  # 2 subjects, one seed: no ordering is claimed
    assert "- MMHVAE better (the paper's ordering holds): none." in text
    assert "## Convergence" in text and "## Posterior spread against error" in text
    sections = table_rows(text, "## Table II analogue")
    titles = [r[0] for r in sections if r[0].startswith("*")]
    assert titles == ["*a) number of latent groups L*", "*b) fusion*", "*c) GAN loss*"]


def test_a_second_run_of_the_command_reuses_every_model_and_score(benchmark_page, caplog):
    work, page, settings = benchmark_page
    before = page.read_text()
    caplog.set_level(logging.INFO, logger="mmhvae")
    phantom_benchmark(work / "work", page, settings)
    out = mmhvae_output(caplog)
    assert out.count("reusing") == MODELS and "training" not in out
    strip = lambda text: re.sub(r"in \d+\.\d min", "", text)  # noqa: E731
    assert strip(page.read_text()) == strip(before)


def test_ablate_reuses_the_page_runs_and_writes_table_ii(benchmark_page, small_config):
    work, _, _ = benchmark_page
    table = ablate(work / "work" / "phantom-train", work / "work", small_config, STEPS,
                   test_data=work / "work" / "phantom-test", with_lpips=False)
    assert "L=1" in table and "average" in table and "without GAN" in table
    with open(work / "work" / "ablation.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["method"] for r in rows} == {v.name for v in ablation_variants(load_config(small_config))}
    assert all(np.isfinite(float(r["psnr"])) for r in rows)


def test_a_learning_rate_sweep_and_seeds_for_some_methods(benchmark_page, tmp_path, caplog):
    work, _, settings = benchmark_page
    shutil.copytree(work / "work", tmp_path / "work")  # a copy: the other tests count the original's models
    caplog.set_level(logging.INFO, logger="mmhvae")
    caplog.clear()
    chosen = dataclasses.replace(settings, ablation=False, methods=("mmhvae", "mmgan"), seeds=2,
                                 learning_rates=(1e-3, 2e-3), steps=STEPS + 1, tuning_steps=STEPS)
    page = phantom_benchmark(tmp_path / "work", tmp_path / "page.md", chosen)
    text = page.read_text()
    assert "## Table II analogue" not in text
    assert all(flag in text for flag in ("--no-ablation", "--seeds 2", "--learning-rates 0.001,0.002",
                                         f"--steps {STEPS + 1}", f"--tuning-steps {STEPS}"))
    assert f"first seed after at most {STEPS} steps" in text
    sweep = table_rows(text, "## Learning rates")
    assert [r[0] for r in sweep] == ["mmhvae", "mmgan"] and all(sum("**" in c for c in r) == 1 for r in sweep)
    assert {r[0] for r in table_rows(text, "## Table I analogue")} == {"mmhvae", "mmgan", "mean-image"}
    for wrong in (("mopoe",), ("mmhvae", "pix2pix")):  # mmhvae is needed; unknown methods are refused
        with pytest.raises(InputError, match="--methods"):
            dataclasses.replace(settings, methods=wrong)
    with pytest.raises(InputError, match="--tuning-steps"):
        dataclasses.replace(settings, tuning_steps=-1)

    def trained(name):
        """The train sections of the runs of `name`, by their cap."""
        models = [m for m in (tmp_path / "work" / "runs").glob("*/model.pt")
                  if re.fullmatch(rf"{re.escape(name)}-[0-9a-f]+", m.parent.name)]
        return {c["max_steps"]: c for c in (load_model_file(m).meta["config"]["train"] for m in models)}

    for lr in ("0.001", "0.002"):  # the sweep keeps each recipe's ratio of final to initial rate
        mmgan, mmhvae = trained(f"mmgan-lr{lr}-seed0")[STEPS], trained(f"mmhvae-lr{lr}-seed0")[STEPS]
        assert mmgan["lr"] == float(lr) and mmgan["lr_final"] == float(lr) and mmgan["critic_lr"] == 2e-4
        assert mmhvae["lr_final"] == pytest.approx(float(lr) / 20)
    seeds = [run for name in ("mmhvae-lr0.001-seed1", "mmhvae-lr0.002-seed1") for run in trained(name).values()]
    assert len(seeds) == 1 and seeds[0]["seed"] == 1 and seeds[0]["fold_seed"] == 0  # same validation split
    assert seeds[0]["max_steps"] == STEPS + 1  # the chosen rate's seeds train to the full cap
    lr = f"{seeds[0]['lr']:g}"
    assert sorted(trained(f"mmhvae-lr{lr}-seed0")) == [STEPS, STEPS + 1]  # the sweep's run and the seed's


def test_paper_groups_map_onto_smaller_hierarchies():
    for count, groups in PAPER_LATENT_GROUPS.items():
        assert matching_latent_groups(groups, 7) == groups and len(groups) == count
    tiny = load_config("tiny")
    assert [matching_latent_groups(g, tiny.model.num_pool + 1) for g in PAPER_LATENT_GROUPS.values()] == [
        (5,), (1, 5), (1, 3, 5), (1, 2, 3, 4, 5), (1, 2, 3, 4, 5)]


def test_cross_validation_tests_every_subject_once_and_never_trains_on_it(tmp_path, small_config):
    data = small_cohort(tmp_path / "data")
    modalities = ModalitySet(MODALITIES)
    tested = []
    for fold in range(3):
        train, test = cross_validation_split(data, modalities, 3, fold)
        assert not {s.name for s in train} & {s.name for s in test}
        tested += [s.name for s in test]
        run = load_config(small_config)
        run.train.folds, run.train.test_fold = 3, fold
        assert [s.name for s in fold_subjects(data, run)[1]] == [s.name for s in test]
    assert sorted(tested) == sorted(p.name for p in data.iterdir())

    rows = crossvalidate(data, tmp_path / "cv", small_config, ["mmhvae"], folds=3, max_steps=STEPS, with_lpips=False)
    assert {r["subject"] for r in rows} == set(tested)
    assert {r["method"] for r in rows} == {"mmhvae", "mean-image"}
    for fold in range(3):
        (model,) = (tmp_path / "cv" / f"fold-{fold}").glob("*/model.pt")
        config = load_model_file(model).meta["config"]["train"]
        assert (config["folds"], config["test_fold"]) == (3, fold)
    assert "3-fold cross-validation" in (tmp_path / "cv" / "table.md").read_text()


def test_evaluate_needs_either_models_or_folds(tmp_path, capsys):
    assert main(["evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--folds", "3",
                 "--model", str(tmp_path / "m.pt")]) == 2
    assert main(["evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--folds", "3",
                 "--methods", "mmhvae,vae"]) == 2
    assert "unknown" in capsys.readouterr().err


def test_info_compares_the_cost_of_every_method(capsys):
    from mmhvae.methods import METHODS

    assert main(["info", "--config", "tiny", "--methods", ",".join(METHODS)]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")][1:]
    assert [line.split("|")[1].strip() for line in table] == list(METHODS)


def test_info_describes_a_config_with_its_own_method(tmp_path, capsys):
    config = tmp_path / "res-cnn.yaml"  # ResViT's Res-CNN stage (docs/training.md): a config naming its method
    config.write_text("base: tiny\nmodel:\n  variant: resvit\n  transformer_blocks: []\ntrain:\n  method: resvit\n")
    assert main(["info", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "method resvit" in out and "network           resvit" in out


def test_speed_only_settings_do_not_change_the_run_folder():
    from mmhvae.experiments.runs import config_digest

    run = load_config("tiny")
    before = config_digest(run)
    run.train.compile = True
    assert config_digest(run) == before
    run.train.lr = 1e-3
    assert config_digest(run) != before
