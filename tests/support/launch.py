"""``python tests/support/launch.py ARGS``: the ``rfstore`` command, with the test fault hooks the
environment asks for (:func:`support.faults.install_from_env`) installed first.

Tests that start real rfstore processes to trace, fill the disk of, or kill run this
instead of the ``rfstore`` script: production rfstore has no fault hook of its own.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for ``support``

from support import faults  # noqa: E402

if __name__ == "__main__":
    faults.install_from_env()
    from rfstore.cli import main

    sys.argv[0] = "rfstore"
    main()
