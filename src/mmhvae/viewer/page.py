"""`mmhvae view`: one offline HTML page to look at results, with NiiVue's WebGL viewers (viewer/collect.py says
what it finds, assets/viewer.js how it is shown).

The page is `OUT.html` beside a folder `OUT_files/` that holds everything it uses: the vendored NiiVue build
and its licence, the page's script and style, one small script per volume (loaded only when shown, so that a
large cohort stays responsive) and the figures. Nothing outside the two is referenced, and nothing is fetched:
the page works from a local folder, copied anywhere, with no server.

Volumes are shown at 8-bit precision (the NIfTI files keep their full values); |error| is computed here
against the data folder's harmonised targets, on the subject's grid.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import markdown
import nibabel as nib
import numpy as np

from mmhvae.errors import InputError, refuse_to_overwrite
from mmhvae.io.files import write_text_atomic
from mmhvae.io.volumes import Volume, read_volume
from mmhvae.viewer.collect import (
    GIVEN_INPUTS,
    Entry,
    absolute_error,
    collect_entries,
    in_model_order,
    model_order,
    subject_truths,
)

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
ASSET_FILES = ("niivue.umd.js", "LICENSE-niivue.txt", "viewer.js", "viewer.css")
UNCERTAINTY_KINDS = ("sd", "interval low", "interval high")


def encoded_volume(array: np.ndarray, like: Volume) -> str:
    """A volume as base64 of a gzipped 8-bit NIfTI on `like`'s grid; scl_slope/inter keep its intensity scale."""
    low, high = float(array.min()), float(array.max())
    step = (high - low) / 255.0 or 1.0
    image = nib.Nifti1Image(np.round((array - low) / step).astype(np.uint8), like.affine)
    image.header.set_slope_inter(step, low)
    image.header.set_zooms(like.zooms)
    return base64.b64encode(gzip.compress(image.to_bytes(), 6)).decode("ascii")


def upper_window(array: np.ndarray, percentile: float) -> float:
    """The top of a display window: a high percentile of the non-zero voxels (0 is outside the field of view)."""
    inside = array[array != 0]
    return float(np.percentile(inside, percentile)) if inside.size else 1.0


class VolumeWriter:
    """Writes each shown volume as volumes/N.js in the page's folder and remembers the display windows."""

    def __init__(self, folder: Path, files_name: str) -> None:
        self.folder, self.files_name = folder / "volumes", files_name
        self.folder.mkdir(parents=True)
        self.paths: dict[str, str] = {}
        self.windows: dict[str, dict[str, dict[str, list[float]]]] = {}

    def add(self, subject: str, modality: str, kind: str, array: np.ndarray, like: Volume) -> str:
        volume_id = f"v{len(self.paths)}"
        (self.folder / f"{volume_id}.js").write_text(
            f'window.mmhvaeVolume("{volume_id}", "{encoded_volume(array, like)}");\n')
        self.paths[volume_id] = f"{self.files_name}/volumes/{volume_id}.js"
        window = self.windows.setdefault(subject, {}).setdefault(modality, {"image": [0.0, 0.0], "spread": [0.0, 0.0]})
        if kind in ("error", "sd"):
            window["spread"][1] = max(window["spread"][1], upper_window(array, 99.0))
        elif kind in ("truth", "prediction"):  # the interval's bounds are shown on their modality's window
            window["image"][1] = max(window["image"][1], upper_window(array, 99.5))
        return volume_id


def entry_inputs(entry: Entry) -> list[str]:
    """The input modalities an entry's label names ('us+t2', 'us (uncertainty)'; none for given inputs)."""
    label = entry.label.split(" (")[0]
    return [] if label == GIVEN_INPUTS else label.split("+")


def subject_volumes(writer: VolumeWriter, subject: str, entries: Sequence[Entry],
                    targets: dict[str, Path]) -> tuple[list[dict], dict[str, str]]:
    """The volumes of one subject: every entry's maps, |error| where a target exists, and the targets."""
    truth = {}
    for modality, path in targets.items():
        volume = read_volume(path)
        truth[modality] = writer.add(subject, modality, "truth", volume.array, volume)
    shown = []
    for entry in entries:
        maps: dict[str, dict[str, str]] = {}
        for kind, by_modality in entry.maps.items():
            for modality, path in by_modality.items():
                volume = read_volume(path)
                maps.setdefault(kind, {})[modality] = writer.add(subject, modality, kind, volume.array, volume)
                if kind == "prediction" and modality in targets:
                    error, grid = absolute_error(path, targets[modality])
                    maps.setdefault("error", {})[modality] = writer.add(subject, modality, "error", error, grid)
        shown.append({"label": entry.label, "inputs": entry_inputs(entry), "maps": maps})
    return shown, truth


def rendered_tables(evaluation: Path | None) -> str:
    """The Markdown pages of an evaluation folder (table.md, brasyn.md, uncertainty.md, ...) as HTML."""
    if evaluation is None:
        return ""
    if not evaluation.is_dir():
        raise InputError("the evaluation folder does not exist", evaluation)
    pages = sorted(evaluation.glob("*.md"))
    if not pages:
        raise InputError("the evaluation folder has no .md table (mmhvae evaluate writes table.md)", evaluation)
    return "\n".join(f'<article class="table-page"><p class="hint">{html.escape(p.name)}</p>'
                     f'{markdown.markdown(p.read_text(), extensions=["tables"])}</article>' for p in pages)


def copy_figures(figures: Sequence[Path], folder: Path, files_name: str) -> str:
    """The figures copied into the page's folder, as HTML."""
    parts = []
    (folder / "figures").mkdir()
    for i, figure in enumerate(figures):
        if not figure.is_file():
            raise InputError("the figure does not exist", figure)
        name = f"{i}-{figure.name}"
        shutil.copyfile(figure, folder / "figures" / name)
        parts.append(f'<figure><img src="{files_name}/figures/{html.escape(name)}" alt="{html.escape(figure.stem)}">'
                     f"<figcaption>{html.escape(figure.name)}</figcaption></figure>")
    return "\n".join(parts)


def page_html(title: str, files_name: str, manifest: dict, tables: str, figures: str) -> str:
    data = json.dumps(manifest).replace("</", "<\\/")
    uncertainty = "".join(f'<option value="{k}">{k}</option>' for k in UNCERTAINTY_KINDS)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<link rel="stylesheet" href="{files_name}/viewer.css">
<script src="{files_name}/niivue.umd.js"></script>
<script>window.MMHVAE_VIEW = {data};</script>
</head>
<body>
<header>
<h1>{html.escape(title)}</h1>
<label>subject<select id="subject"></select></label>
<label>inputs<select id="subset"></select></label>
<label>uncertainty<select id="uncertainty">{uncertainty}</select></label>
<label>modalities<select id="rows"></select></label>
<span id="location"></span><span id="message"></span>
</header>
<main>
<p class="hint">Click or drag in any viewer: all follow its slice and crosshair (scroll: slice, right-drag:
window). |error|: absolute difference to the harmonised ground truth, on the colour scale shared with the sd.
Volumes are shown at 8-bit precision.</p>
<div id="grid"></div>
<section id="tables"><h2>Tables</h2>{tables or '<p class="hint">No evaluation folder given.</p>'}</section>
<section id="figures"><h2>Figures</h2>{figures or '<p class="hint">No figures.</p>'}</section>
</main>
<footer>Made by mmhvae view with NiiVue ({files_name}/LICENSE-niivue.txt).</footer>
<script src="{files_name}/viewer.js"></script>
</body>
</html>
"""


def build_view(predictions: Sequence[str | Path], out: str | Path, data: str | Path | None = None,
               evaluation: str | Path | None = None, figures: Sequence[str | Path] = (),
               title: str = "mmhvae results", overwrite: bool = False) -> Path:
    """The `mmhvae view` job: OUT.html and OUT_files/ for the prediction folders, the subjects' ground truth in
    `data`, the tables of an `evaluation` folder and `figures` (with the evaluation folder's PNGs)."""
    out = Path(out)
    if out.suffix != ".html":
        raise InputError("the page must be an .html file", out)
    files = out.with_name(out.stem + "_files")
    refuse_to_overwrite(out, overwrite, problem="the page already exists")
    entries = collect_entries([Path(p) for p in predictions])
    modalities = model_order(entries)
    entries = in_model_order(entries, modalities)
    subjects = list(dict.fromkeys(e.subject for e in entries))
    truths = subject_truths(Path(data) if data else None, subjects)
    evaluation = Path(evaluation) if evaluation else None
    tables = rendered_tables(evaluation)
    figures = [Path(f) for f in figures] + (sorted(evaluation.glob("*.png")) if evaluation else [])
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{files.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp's folder is private; the page's folder is for sharing
    try:
        writer = VolumeWriter(staging, files.name)
        shown = {}
        truth = {}
        for subject in subjects:
            targets = truths[subject].targets if subject in truths else {}
            shown[subject], truth[subject] = subject_volumes(writer, subject, [e for e in entries
                                                                               if e.subject == subject], targets)
            log.info(f"{subject}: {len(shown[subject])} input sets")
        for name in ASSET_FILES:
            shutil.copyfile(ASSETS / name, staging / name)
        figure_html = copy_figures(figures, staging, files.name)
        manifest = {"modalities": modalities, "subjects": subjects, "entries": shown, "truth": truth,
                    "windows": writer.windows, "volumes": writer.paths}
        if files.exists():
            shutil.rmtree(files)
        staging.rename(files)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_text_atomic(out, page_html(title, files.name, manifest, tables, figure_html))
    log.info(f"wrote {out} and {files} ({len(writer.paths)} volumes)")
    return out
