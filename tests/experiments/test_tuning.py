import dataclasses

from mmhvae.config import TrainConfig
from mmhvae.experiments.tuning import ConvergenceCriterion, convergence


def test_a_page_judges_its_curves_by_the_rule_its_runs_stopped_by():
    train = dataclasses.replace(TrainConfig(), early_stopping_patience=5, early_stopping_tail=0.2,
                                early_stopping_min_delta=0.01)
    criterion = ConvergenceCriterion.of(train)
    assert criterion == ConvergenceCriterion(tail=0.2, tolerance=0.01, validations=5)
    # steps 800-1000 at every 50 would hold 5 validations; at every 100 the same window holds only 3
    flat = [(step, 1.0) for step in range(100, 1001, 100)]
    assert not convergence(flat, criterion).converged and convergence(flat).converged
    assert convergence([(step, 1.0) for step in range(50, 1001, 50)], criterion).converged
    falling = [(step, 2.0 - step / 1000) for step in range(50, 1001, 50)]
    assert not convergence(falling, criterion).converged


def test_a_config_that_stops_another_way_is_judged_by_the_default_criterion():
    patience_only = dataclasses.replace(TrainConfig(), early_stopping_patience=4, early_stopping_tail=0.0)
    assert ConvergenceCriterion.of(patience_only) == ConvergenceCriterion()
    assert ConvergenceCriterion.of(TrainConfig()) == ConvergenceCriterion()


def test_the_earliest_stop_is_where_a_flat_curve_first_meets_the_criterion():
    criterion = ConvergenceCriterion(tail=0.2, tolerance=0.01, validations=5)
    assert criterion.earliest_step(50) == 1000  # steps 800..1000: five validations
    assert criterion.earliest_step(25) == 500 and ConvergenceCriterion(validations=4).earliest_step(25) == 375
    assert ConvergenceCriterion(tolerance=0.0).earliest_step(50) is None  # a flat curve never moves by < 0
