"""`mmhvae view`: what the page finds and writes (layouts, |error| maps, one self-contained folder), its refusals,
and, in headless Chromium, that the viewers draw, follow the subset selector and log no error."""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from mmhvae.cli.main import main
from mmhvae.model.mmhvae import MMHVAE
from mmhvae.model.mmhvae_config import MMHVAEConfig
from mmhvae.model_file import save_model_file
from mmhvae.phantom.cohort import simulate_cohort
from mmhvae.preprocessing.prepare import PreprocessConfig

SMALL = MMHVAEConfig(image_size=32, num_pool=3, latent_channels=(2, 4, 4), global_latent=8, base_features=4,
                     max_features=8, decoder_blocks=1)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A phantom subject, its predictions from every input subset, and 3 samples from the ultrasound alone."""
    root = tmp_path_factory.mktemp("view")
    torch.manual_seed(0)
    model = save_model_file(root / "model.pt", MMHVAE.from_config(SMALL).eval(),
                            PreprocessConfig(modalities=SMALL.modalities, image_size=32))
    simulate_cohort(root / "data", subjects=1, size=32, seed=300, missing="complete")
    subject = root / "data" / "sub-000"
    assert main(["predict", "--model", str(model), "--input", str(subject), "--out", str(root / "all"),
                 "--all-subsets"]) == 0
    assert main(["predict", "--model", str(model), "--input", str(subject), "--out", str(root / "sampled"),
                 "--inputs", "us", "--samples", "3"]) == 0
    assert main(["view", "--predictions", str(root / "all"), str(root / "sampled"), "--data", str(root / "data"),
                 "--out", str(root / "page" / "report.html")]) == 0
    return root


def manifest(page) -> dict:
    text = page.read_text()
    return json.loads(re.search(r"window\.MMHVAE_VIEW = (\{.*?\});</script>", text).group(1).replace("<\\/", "</"))


def decoded(files, volume_id: str) -> np.ndarray:
    script = (files / "volumes" / f"{volume_id}.js").read_text()
    data = re.search(r'"([A-Za-z0-9+/=]{100,})"', script).group(1)
    image = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(data)))
    return np.asarray(image.get_fdata(), np.float32)


def test_the_page_lists_every_input_subset_and_the_sampled_run(results):
    view = manifest(results / "page" / "report.html")
    assert view["modalities"] == ["us", "t2", "t1c", "flair"]
    labels = [e["label"] for e in view["entries"]["sub-000"]]
    assert len(labels) == 1 + 15 and labels[:2] == ["given inputs", "us"] and labels[-1] == "us+t2+t1c+flair"
    sampled = [e for e in view["entries"]["sub-000"] if e["label"] == "given inputs"]
    assert set(sampled[0]["maps"]) == {"prediction", "sd", "error"}  # uncalibrated: no interval
    assert set(view["truth"]["sub-000"]) >= {"t2", "t1c", "flair"}


def test_error_maps_are_the_absolute_difference_to_the_harmonised_target(results):
    view, files = manifest(results / "page" / "report.html"), results / "page" / "report_files"
    entry = next(e for e in view["entries"]["sub-000"] if e["label"] == "us")
    predicted = nib.load(str(results / "all" / "sub-000" / "us" / "t2.nii.gz")).get_fdata()
    target = nib.load(str(results / "data" / "sub-000" / "targets" / "t2.nii.gz")).get_fdata()
    expected = np.where(predicted != 0, np.abs(predicted - target), 0.0)
    shown = decoded(files, entry["maps"]["error"]["t2"])
    assert np.abs(shown - expected).max() <= expected.max() / 255 + 1e-6  # 8-bit display copy
    assert decoded(files, entry["maps"]["prediction"]["t2"]).shape == predicted.shape


def test_the_page_references_only_its_own_folder(results):
    page, files = results / "page" / "report.html", results / "page" / "report_files"
    references = re.findall(r'(?:src|href)="([^"]+)"', page.read_text())
    references += list(manifest(page)["volumes"].values())
    assert references and all(r.startswith("report_files/") for r in references)
    assert all((page.parent / r).is_file() for r in references)
    assert not re.search(r"https?://", (files / "viewer.js").read_text())
    assert (files / "LICENSE-niivue.txt").read_text().startswith("BSD 2-Clause License")


@pytest.mark.parametrize("change, expected", [
    ("no-predictions", "no predictions found"),
    ("not-html", "the page must be an .html file"),
    ("unknown-subject", "the data folder has no subject sub-000"),
    ("exists", "the page already exists"),
])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing_behind(results, tmp_path, capsys, change, expected):
    args = {"--predictions": str(results / "all"), "--data": str(results / "data"),
            "--out": str(tmp_path / "report.html")}
    if change == "no-predictions":
        (tmp_path / "empty" / "sub-000").mkdir(parents=True)
        args["--predictions"] = str(tmp_path / "empty")
    elif change == "not-html":
        args["--out"] = str(tmp_path / "report.txt")
    elif change == "unknown-subject":
        simulate_cohort(tmp_path / "other", subjects=1, size=32, seed=301, missing="complete")
        (tmp_path / "other" / "sub-000").rename(tmp_path / "other" / "sub-009")
        args["--data"] = str(tmp_path / "other")
    elif change == "exists":
        (tmp_path / "report.html").write_text("mine")
    code = main(["view", *[x for pair in args.items() for x in pair]])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("empty", "other"))
    assert left == (["report.html"] if change == "exists" else [])
    if change == "exists":
        assert (tmp_path / "report.html").read_text() == "mine"


# ----------------------------------------------------------------------------------------------------------
# In the browser
# ----------------------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
# Software WebGL 2 in headless Chromium (no GPU on these machines); as root the sandbox must be off.
CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


def picture(page, selector: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("RGB")).astype(int)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does)")
def test_the_viewers_draw_follow_the_subset_and_log_no_error(results):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency (make install)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 1000})
        errors = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto((results / "page" / "report.html").as_uri(), wait_until="domcontentloaded", timeout=120_000)
        ready = "window.MMHVAE_STATUS && window.MMHVAE_STATUS.ready && window.MMHVAE_STATUS.loads == {}"
        page.wait_for_function(ready.format(1), timeout=180_000)
        before = {cell: picture(page, f"#view-{cell}") for cell in ("1-0", "1-1", "1-2")}  # t2: pred, truth, error
        for cell, image in before.items():
            assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20, f"viewer {cell} is blank"
        page.select_option("#subset", label="t2+t1c")
        page.wait_for_function(ready.format(2), timeout=180_000)
        after = picture(page, "#view-1-0")
        assert np.abs(after - before["1-0"]).mean() > 1.0  # T2 predicted from t2+t1c, not from us
        assert np.array_equal(picture(page, "#view-1-1"), before["1-1"])  # the ground truth stays
        # a click in one viewer moves every viewer's crosshair to the same place
        box = page.locator("#view-0-0").bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.4)
        page.wait_for_timeout(300)
        positions = page.evaluate("window.MMHVAE_VIEWERS.filter((nv) => nv.volumes.length)"
                                  ".map((nv) => Array.from(nv.scene.crosshairPos))")
        assert len(positions) >= 9 and not np.allclose(positions[0], 0.5)
        assert np.allclose(positions, positions[0], atol=1e-4)
        status = page.evaluate("window.MMHVAE_STATUS.errors")
        browser.close()
    assert errors == [] and status == []
