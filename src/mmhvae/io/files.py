"""Safe file writing: every output goes to a temporary name in the same folder, then is renamed.

A crash at any moment leaves either the old file or the new one, never a partial file.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import socket
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

TEMPORARY_MARK = ".tmp"


def _writer_tag() -> str:
    """Host and process of this writer, so a later writer can tell a dead writer's leftovers from a live one's."""
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete hidden temporaries left in `folder` by writers of this host that were killed mid-write.

    Names are `.<target>.<host>-<pid>.<random>.tmp<suffixes>`; a file is removed only if its host is this
    one and its process no longer exists, so concurrent writers (other processes, other nodes on a shared
    disk) are never disturbed.
    """
    host = socket.gethostname().replace(".", "_")
    removed = []
    for candidate in folder.glob(f".*.{host}-*{TEMPORARY_MARK}*"):
        match = re.search(rf"\.{re.escape(host)}-(\d+)\.[^.]+{re.escape(TEMPORARY_MARK)}", candidate.name)
        if match and not _process_is_alive(int(match.group(1))):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync and rename it onto `path`.

    The temporary name keeps the final suffixes (e.g. `.nii.gz`) so libraries that choose a format
    from the file name still do the right thing. Leftovers of killed writers in the folder are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    suffix = "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{_writer_tag()}.", suffix=f"{TEMPORARY_MARK}{suffix}",
                                    dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual permissions
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv_atomic(path: str | Path, rows: Iterable[dict], fields: Sequence[str]) -> Path:
    """A CSV with a header row of `fields` (keys a row lacks are left empty), written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(fields))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k) for k in fields})
    return Path(path)
