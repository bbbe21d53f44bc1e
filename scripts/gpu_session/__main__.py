"""Entry point: ``python scripts/gpu_session`` (or ``python -m gpu_session`` with
``scripts/`` on ``sys.path``) runs :func:`gpu_session.cli.main`.

Run as a folder, this file is no package's module, so the folder's parent (``scripts/``)
takes the folder's place on ``sys.path`` and the package is imported by its name: the
same ``sys.path`` a script directly in ``scripts/`` gets, so nothing in this folder
shadows another module.
"""

import sys
from pathlib import Path

if __package__:
    from .cli import main
else:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    from gpu_session.cli import main

if __name__ == "__main__":
    sys.exit(main())
