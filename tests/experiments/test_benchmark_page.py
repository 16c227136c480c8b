from mmhvae.experiments.benchmark_page import edge_of_sweep


def test_the_page_says_which_methods_chose_a_rate_at_the_edge_of_the_sweep():
    rates = [1e-4, 5e-4, 2e-3]
    sweep = {"mmhvae": {1e-4: 0.5, 5e-4: 0.2, 2e-3: 0.1}, "m2dn": {1e-4: 0.1, 5e-4: 0.2, 2e-3: 0.3},
             "mmgan": {1e-4: 0.5, 5e-4: 0.1, 2e-3: 0.3}}
    text = edge_of_sweep(sweep, rates)
    assert "1 of 3 methods (mmhvae) chose the largest rate" in text
    assert "1 of 3 methods (m2dn) chose the smallest rate" in text and "mmgan" not in text
    inside = {"mmgan": sweep["mmgan"]}
    assert "lies inside the grid" in edge_of_sweep(inside, rates) and edge_of_sweep(sweep, [2e-3]) == ""


def test_the_claims_carry_a_caveat_naming_the_methods_that_had_not_converged():
    from mmhvae.experiments.benchmark_page import claims_text

    assert "did not meet" not in claims_text([], ("psnr",))
    one = claims_text([], ("psnr",), ["m2dn"])
    assert "Some runs of m2dn did not meet the convergence criterion" in one and "involve it" in one
    assert "involve them describe those methods" in claims_text([], ("psnr",), ["mmgan", "m2dn"])


def test_a_narrower_method_is_judged_on_its_own_cells_as_its_table_shows_it():
    """MHVAE (us, t2) is better than MMHVAE on us -> t2, while MMHVAE's pooled synthesis (which also has the
    easy us -> t1c cell) is higher: the claim must follow the cells both were scored on."""
    from mmhvae.experiments.benchmark_page import claims_text

    def row(method, target, subject, seed, psnr):
        return {"method": method, "inputs": "us", "target": target, "task": "synthesis", "subject": f"s{subject}",
                "seed": seed, "psnr": psnr + 0.01 * subject + 0.001 * seed}

    rows = []
    for subject in range(10):
        for seed in (0, 1):
            rows += [row("mmhvae", "t2", subject, seed, 10.0), row("mmhvae", "t1c", subject, seed, 40.0),
                     row("mhvae", "t2", subject, seed, 20.0 + 0.05 * subject)]
    text = claims_text(rows, ("psnr",))
    assert "MMHVAE worse (the ordering is reversed): mhvae (synthesis PSNR)." in text


def test_the_convergence_section_says_which_methods_anneal_their_rate_to_the_cap():
    from mmhvae.config import load_config
    from mmhvae.experiments.benchmark_page import annealed_methods, schedule_note

    annealed = annealed_methods(load_config("tiny"), ["mmhvae", "mmgan", "resvit", "m2dn", "mmhvae"])
    assert annealed == ["mmhvae", "resvit"]  # a cosine to lr/20 and to 0; MM-GAN and M2DN keep a constant rate
    note = schedule_note(["mmhvae", "mmgan", "resvit", "m2dn"], annealed)
    assert note.startswith("mmhvae, resvit decay their learning rate") and "mmgan, m2dn train at a constant" in note
    assert schedule_note(["mmgan"], []) == ""
