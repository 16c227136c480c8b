from mmhvae.experiments.benchmark_page import edge_of_sweep


def test_the_page_says_which_methods_chose_a_rate_at_the_edge_of_the_sweep():
    rates = [1e-4, 5e-4, 2e-3]
    sweep = {"mmhvae": {1e-4: 0.5, 5e-4: 0.2, 2e-3: 0.1}, "m2dn": {1e-4: 0.1, 5e-4: 0.2, 2e-3: 0.3},
             "mmgan": {1e-4: 0.5, 5e-4: 0.1, 2e-3: 0.3}}
    text = edge_of_sweep(sweep, rates)
    assert "1 of 3 methods (mmhvae) chose the largest rate" in text
    assert "1 of 3 methods (m2dn) chose the smallest rate" in text and "mmgan" not in text
    inside = {"mmgan": sweep["mmgan"]}
    assert edge_of_sweep(inside, rates) == "" and edge_of_sweep(sweep, [2e-3]) == ""


def test_the_claims_carry_a_caveat_naming_the_methods_that_had_not_converged():
    from mmhvae.experiments.benchmark_page import claims_text

    assert "did not meet" not in claims_text([], ("psnr",))
    one = claims_text([], ("psnr",), ["m2dn"])
    assert "Some runs of m2dn did not meet the convergence criterion" in one and "involve it" in one
    assert "involve them describe those methods" in claims_text([], ("psnr",), ["mmgan", "m2dn"])
