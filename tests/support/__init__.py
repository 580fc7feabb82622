"""Test support code: fault injection (:mod:`support.faults`) and the rfstore launcher that installs it."""
