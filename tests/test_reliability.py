"""Reliability: fuzzed loaders have two outcomes only, and killed writers never leave partial files."""

from __future__ import annotations

import gzip
import io
import os
import signal
import socket
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmhvae.config import load_config
from mmhvae.errors import InputError
from mmhvae.io.volumes import read_volume

from conftest import brain_like, oblique_affine


def valid_nifti_bytes() -> bytes:
    image = nib.Nifti1Image(brain_like((6, 5, 4)), oblique_affine())
    buffer = io.BytesIO()
    file_map = nib.Nifti1Image.make_file_map({"image": buffer, "header": buffer})
    image.to_file_map(file_map)
    return buffer.getvalue()


VALID = valid_nifti_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(0, len(VALID)),
    flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8),
    compress=st.booleans(),
)
def test_fuzzed_nifti_files_load_or_give_an_input_error(tmp_path, cut, flips, compress):
    data = bytearray(VALID[:cut])
    for position, value in flips:
        if position < len(data):
            data[position] = value
    path = tmp_path / ("fuzz.nii.gz" if compress else "fuzz.nii")
    path.write_bytes(gzip.compress(bytes(data), mtime=0) if compress else bytes(data))
    try:
        volume = read_volume(path)
    except InputError as exc:
        assert "fuzz.nii" in str(exc) and "\n" not in str(exc)
    else:
        assert volume.array.ndim == 3 and np.all(np.isfinite(volume.array))


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                         st.text(max_size=12))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(st.text(max_size=10), inner,
                                                                                 max_size=4)), max_leaves=8)
field_names = st.sampled_from(["image_size", "num_pool", "latent_channels", "fusion", "batch_size", "lr",
                               "max_steps", "modalities", "topdown", "wm_targets", "seed", "nonsense"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    document=st.one_of(
        yaml_values,
        st.dictionaries(st.sampled_from(["model", "data", "train", "base", "other"]),
                        st.one_of(yaml_values, st.dictionaries(field_names, yaml_values, max_size=4)),
                        max_size=3),
    ),
)
def test_fuzzed_configs_load_or_give_an_input_error(tmp_path, document):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        load_config(path)
    except InputError as exc:
        assert "\n" not in str(exc)


WRITER = """
import sys, numpy as np
from mmhvae.io.files import write_text_atomic
from mmhvae.io.volumes import new_volume, write_volume
target = sys.argv[1]
volume = new_volume(np.zeros((40, 40, 20), np.float32), np.eye(4))
open(target + '.started', 'w').close()
i = 0
while True:
    i += 1
    write_volume(target + '.nii.gz', np.full((40, 40, 20), i, np.float32), volume)
    write_text_atomic(target + '.txt', ('%d\\n' % i) * 5000)
"""


@pytest.mark.slow
def test_a_writer_killed_at_random_moments_never_leaves_a_partial_file(tmp_path):
    rng = np.random.default_rng(0)
    target = tmp_path / "out"
    seen = 0
    for _ in range(12):
        started = tmp_path / "out.started"
        started.unlink(missing_ok=True)
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
        deadline = time.monotonic() + 120  # imports can take long on a loaded machine
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0.05, 0.6)))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if (tmp_path / "out.txt").exists():
            seen += 1
            lines = (tmp_path / "out.txt").read_text().splitlines()
            assert len(lines) == 5000 and len(set(lines)) == 1
        if (tmp_path / "out.nii.gz").exists():
            array = read_volume(tmp_path / "out.nii.gz").array
            assert array.shape == (40, 40, 20) and len(np.unique(array)) == 1
    assert seen >= 6, "the writer was killed before writing anything too often to test anything"
    # The next write removes the hidden temporaries the killed writers left (and only those).
    from mmhvae.io.files import write_text_atomic

    # A writer killed inside its write, for certain (the random kills above may all land between writes, and
    # each new writer already cleans its predecessors' leftovers).
    killed_mid_write = ("import os, signal, sys\nfrom mmhvae.io.files import atomic_path\n"
                        "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_text('half')\n"
                        "    os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", killed_mid_write, str(tmp_path / "out.txt")])
    assert list(tmp_path.glob(".out.txt.*")), "the killed writer left no temporary: nothing to clean up"
    live = tmp_path / f".out.txt.{socket.gethostname().replace('.', '_')}-{os.getpid()}.abcd1234.tmp.txt"
    live.write_text("a live writer's temporary")
    write_text_atomic(tmp_path / "out.txt", "final")
    left = sorted(p.name for p in tmp_path.glob(".*"))
    assert left == [live.name], left
