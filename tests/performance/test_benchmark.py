"""The benchmark runs end to end on a small configuration and reports every figure."""

from __future__ import annotations

import math

from mmhvae.performance.benchmark import all_subsets_times, benchmark, cpu_description, markdown, training_step_time
from mmhvae.performance.cost import method_network

from conftest import SMALL_CONFIG


def test_benchmark_reports_every_figure_for_each_method(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(SMALL_CONFIG)
    report = benchmark([str(config)], ["mmhvae", "mopoe", "mmgan", "resvit", "m2dn"], repeats=1, depth=3,
                       train_batches=(2,), phantom_subjects=0)
    assert [r["method"] for r in report["results"]] == ["mmhvae", "mopoe", "mmgan", "resvit", "m2dn"]
    for result in report["results"]:
        assert result["parameters"] > 0 and result["macs_all_inputs_g"] > 0
        for key in ("latency_ms_batch1", "latency_ms_per_slice_batch16", "all_subsets_one_run_s",
                    "all_subsets_separate_runs_s"):
            assert math.isfinite(result[key]) and result[key] > 0, key
        assert result["train_step_s"]["2"] > 0 and result["train_peak_memory_gb"]["2"] > 0
    mopoe, full = report["results"][1], report["results"][0]
    assert mopoe["parameters"] < full["parameters"]  # one latent group instead of four
    table = markdown(report)
    assert table.count("\n| ") == 6 and "nan" not in table
    assert f"family {report['machine']['cpu_family']}, model {report['machine']['cpu_model']}" in table


def test_bf16_benchmark_and_the_remind_epoch_estimate(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(SMALL_CONFIG)
    report = benchmark([str(config)], ["mmhvae"], repeats=1, depth=2, train_batches=(2,), phantom_subjects=0,
                       precision="bf16")
    (result,) = report["results"]
    assert result["precision"] == "bf16" and result["latency_ms_batch1"] > 0
    # 70 volumes x 160 slices at batch 2: 5,600 steps of the measured step time
    assert math.isclose(result["remind_epoch_minutes"], 5600 * result["train_step_s"]["2"] / 60)
    assert "precision bf16" in markdown(report)


def test_separate_single_subset_runs_encode_only_their_subset(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(SMALL_CONFIG)
    model, _ = method_network(str(config), "mmhvae")
    model.eval()
    calls = []
    for encoder in model.encoders:
        encoder.register_forward_hook(lambda *_: calls.append(1))
    all_subsets_times(model, depth=2, repeats=1)  # a warm-up and one timed run of each
    modalities = len(model.config.modalities)
    encodes_alone = modalities * 2 ** (modalities - 1)  # every modality of every subset: 32 for 4
    assert len(calls) == 2 * (modalities + encodes_alone)


def test_cpu_description_names_the_cpu_its_family_model_and_avx512(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                       "model name\t: AMD EPYC 9654\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n\n"
                       "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC 9654\n")
    cpu = cpu_description(cpuinfo)
    assert (cpu["cpu"], cpu["cpu_family"], cpu["cpu_model"], cpu["avx512"]) == ("AMD EPYC 9654", "25", "17", "yes")
    cpuinfo.write_text("cpu family\t: 6\nmodel\t\t: 85\nmodel name\t: Intel Xeon\nflags\t\t: avx2 avx512_vnni\n")
    assert cpu_description(cpuinfo)["avx512"] == "no"  # AVX-512 foundation is the avx512f flag
    assert cpu_description(tmp_path / "absent")["cpu_family"] == "?"



def test_compile_reaches_the_networks_that_support_it_in_inference_and_training(tmp_path, monkeypatch):
    # torch.compile's own outputs are tested in tests/model/test_mmhvae.py; here, that the benchmark applies it
    from mmhvae.model.mmhvae import MMHVAE

    compiled = []
    monkeypatch.setattr(MMHVAE, "compile_blocks", lambda self: compiled.append(self) or self)
    config = tmp_path / "small.yaml"
    config.write_text(SMALL_CONFIG)
    report = benchmark([str(config)], ["mmhvae", "mmgan"], repeats=1, depth=1, train_batches=(),
                       phantom_subjects=0, compile_network=True)
    mmhvae, mmgan = report["results"]
    assert mmhvae["compiled"] and not mmgan["compiled"] and len(compiled) == 1
    assert "| mmhvae (compiled) |" in markdown(report) and "| mmgan |" in markdown(report)
    assert training_step_time(str(config), "mmhvae", 2, 1, "cpu", compile_network=True)["seconds"] > 0
    assert len(compiled) == 2
