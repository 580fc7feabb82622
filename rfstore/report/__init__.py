"""What people see: per-unit pictures (:mod:`.figures`), plots (:mod:`.plots`) and the
static HTML report's pages (:mod:`.pages`), from data read by :mod:`.data`.

The ``report`` and ``show`` stages (:mod:`rfstore.report.build`) put them together;
:mod:`rfstore.api` draws them inline in a notebook.
"""
