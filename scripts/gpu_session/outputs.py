"""What comes back in ``$OUT``: ``results.tar.gz`` (the staging folder), ``results.json``
and ``summary.txt``, and the check of their count and sizes against the device's limits."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from . import REPO
from .problems import Problem
from .study import STUDY_RESULTS
from .summary import summary_text, verdict

if TYPE_CHECKING:
    from .session import Session

OUT_NAMES = ("summary.txt", "results.tar.gz", "results.json")
MAX_OUT_FILES = 4
MAX_FILE_BYTES = 16 * 2**20
MEMBER_CAP_BYTES = 4 * 2**20
"""A file above this goes into the archive as its first and last half of this size."""


def archive_members(session: Session) -> Iterable[tuple[Path, str]]:
    """(file, name in the archive): the staging folder, and in study mode the study's
    GPU results under their path in the checkout."""
    for path in sorted(session.stage.rglob("*")):
        if path.is_file():
            yield path, path.relative_to(session.stage).as_posix()
    if session.args.study:
        for path in sorted(STUDY_RESULTS.rglob("*")) if STUDY_RESULTS.exists() else []:
            if path.is_file():
                yield path, path.relative_to(REPO).as_posix()


def write_archive(session: Session, target: Path) -> list[str]:
    """``results.tar.gz`` of :func:`archive_members`; a file above
    :data:`MEMBER_CAP_BYTES` keeps its head and tail. Returns the names, with notes."""
    names = []
    with tarfile.open(target, "w:gz") as tar:
        for path, name in archive_members(session):
            size = path.stat().st_size
            if size <= MEMBER_CAP_BYTES:
                tar.add(path, arcname=name)
                names.append(name)
                continue
            half = MEMBER_CAP_BYTES // 2
            with path.open("rb") as f:
                head = f.read(half)
                f.seek(size - half)
                data = head + b"\n[... cut by gpu_session ...]\n" + f.read()
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
            names.append(f"{name} (cut: {size} B, head and tail kept)")
    return names


def out_files(out: Path) -> list[tuple[str, int]]:
    """Every file under ``out`` (relative name, bytes)."""
    return [
        (p.relative_to(out).as_posix(), p.stat().st_size)
        for p in sorted(out.rglob("*"))
        if p.is_file()
    ]


def limit_problems(files: list[tuple[str, int]]) -> list[Problem]:
    """FAIL if ``$OUT`` holds more than :data:`MAX_OUT_FILES` files or one of
    :data:`MAX_FILE_BYTES` or more."""
    problems = []
    if len(files) > MAX_OUT_FILES:
        problems.append(Problem("FAIL", f"$OUT holds {len(files)} files (limit {MAX_OUT_FILES})"))
    problems += [
        Problem("FAIL", f"$OUT/{name} is {size} B (limit < {MAX_FILE_BYTES} B)")
        for name, size in files
        if size >= MAX_FILE_BYTES
    ]
    return problems


def write_once(session: Session, final: bool) -> int:
    """Write the archive, then ``results.json``, then ``summary.txt`` (which lists the
    other two with their sizes) to ``$OUT``; returns the exit status of the verdict."""
    out = session.args.out
    out.mkdir(parents=True, exist_ok=True)
    members = write_archive(session, out / "results.tar.gz")
    line, status = verdict(session, final)
    payload = {
        "verdict": line,
        "exit_status": status,
        "final": final,
        "problems": [asdict(p) for p in session.problems],
        "phases": [asdict(p) for p in session.phases],
        "preflight": session.preflight,
        "tests": asdict(session.tests) if session.tests else None,
        "bench": [asdict(r) for r in session.bench],
        "archive": members,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    files = [f"{name}: {size} B" for name, size in out_files(out) if name != "summary.txt"]
    files += ["summary.txt: this file", "results.tar.gz holds:", *[f"  {m}" for m in members]]
    (out / "summary.txt").write_text(summary_text(session, line, files))
    return status


def write_outputs(session: Session, final: bool) -> int:
    """:func:`write_once`; when ``final``, then check the count and sizes of the files in
    ``$OUT``, and on a breach add it as a FAIL and write both files again. Returns the
    exit status."""
    status = write_once(session, final)
    if final:
        breaches = limit_problems(out_files(session.args.out))
        if breaches:
            session.problems += breaches
            status = write_once(session, final)
    return status


def report_files(out: Path) -> None:
    """Print the count and size of every file under ``out``, against the limits."""
    files = out_files(out)
    print(f"{len(files)} file(s) in {out} (limit {MAX_OUT_FILES}, each < {MAX_FILE_BYTES} B):")
    for name, size in files:
        flag = "" if size < MAX_FILE_BYTES else "  <-- over the limit"
        print(f"  {name}: {size} B{flag}")
