"""Test support code: fault injection (:mod:`support.faults`), the rfstore launcher that installs it
(``launch.py``), and whole-store comparison (:mod:`support.stores`)."""
