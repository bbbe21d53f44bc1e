"""One GPU validation in one call: install, preflight, the gpu tests, the quick benchmarks.

Made for a lent GPU machine (one device call of at most 10 minutes, at most 8 files back):
everything runs within ``--budget`` seconds (default 540), each phase within its own
share of it, and what comes back is at most 4 files under ``$OUT`` (default ``gpu_out/``),
each checked to be under 16 MiB before the script exits:

* ``summary.txt``: the verdict on line 1 (``PASS``, ``PARTIAL``, ``FAIL``, or
  ``DRY-RUN OK``), the preflight, the test counts with the failing ids and skip
  reasons, the benchmark table with ratios to the baselines, the time of each phase
* ``results.tar.gz``: the junit XML, every log, the benchmarks' JSON / JSON lines /
  Markdown, ``nvidia-smi`` (never the compile caches)
* ``results.json``: the summary, machine-readable

Phases, with ``--budget 540``: ``install`` (``pip install --no-deps --no-build-isolation
-e .``; the GPU machines' image already holds the test extras the gpu tests import, such
as hypothesis; at most 60 s), ``preflight`` (versions, device, compilers, backends; at
most 30 s), ``tests`` (``python -m pytest -m gpu tests`` in ``--workers`` pytest-xdist
workers, ``--test-timeout`` per test, ``--tests-share`` of what is left; pyproject's
``addopts`` dropped, a module that fails to import does not stop the others and is
reported as a FAIL with its error), ``bench`` (the five runners of ``benchmarks/`` with
``--quick``, each given a share of what is left and appending each finished case to its
JSON lines, so a runner stopped at its deadline keeps what it measured), then the outputs
(15 s kept in reserve). A command past its deadline gets SIGINT (pytest then still writes
its junit), then SIGKILL; where no junit was written, one is rebuilt from pytest's log.

The verdict is FAIL (exit status 1) when a test fails or errs or a test module cannot be
imported, when more than half of the gpu tests were skipped or none ran (e.g. the Triton
backend reported itself unavailable), when a log shows a CUDA error or a crashed worker,
when a benchmark runner fails or one of our implementations gives a wrong result, when
the device or a backend is missing, or when the outputs break the limits; PARTIAL (exit
status 3) when a phase was stopped at its deadline; else PASS (0). Summary and archive
are also rewritten after every phase, so a run killed from outside leaves a summary that
says how far it got (``INCOMPLETE``).

Compile caches (Triton, CuPy, the CPU kernels' ``STEP_CACHE_DIR``) live in the
git-ignored ``.gpu_session/cache/``, so a second call on the same warm machine reuses
them. ``TRITON_INTERPRET`` is removed from every command's environment.

``--dry-run`` (CPU, about half a minute) exercises all of it but the GPU work: no install, a
generated module of four tests instead of the gpu tests, the CPU-capable benchmark
runners on tiny sizes, the GPU-only ones skipped with a note; the verdict is then
``DRY-RUN OK`` or ``FAIL``. ``--study`` runs the accuracy study's ``[gpu]`` configurations
instead (resumable, see ``experiments/accuracy/``); its results are archived under
``experiments/accuracy/results/gpu/``.

Usage (from the checkout's root; ``scripts/`` is not a package, so the folder is run as a
script, which puts ``scripts/`` on ``sys.path``)::

    bash scripts/gpu_session.sh                  # = python scripts/gpu_session
    python scripts/gpu_session --budget 540 --workers 8
    python scripts/gpu_session --dry-run         # on a CPU machine
    bash scripts/gpu_session.sh study            # = python scripts/gpu_session --study

The modules, one job each: ``cli`` (arguments, the phase sequence, the exit status),
``budget`` (deadlines, running a command, its environment), ``problems`` (what the verdict
reports, error lines of logs), ``session`` (what one call did), ``install``,
``preflight``, ``junit`` (pytest's junit XML, read or rebuilt from a log), ``gpu_tests``
(the tests phase), ``bench`` (the benchmarks phase), ``study``, ``summary`` (the text of
``summary.txt``) and ``outputs`` (the archive, ``results.json``, the limits on ``$OUT``).
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
"""The checkout's root: every command runs there."""
PACKAGE = Path(__file__).resolve().parent
"""This folder: ``python PACKAGE`` runs :mod:`gpu_session.cli` (as the probe does)."""
