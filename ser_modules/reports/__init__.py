"""Reports of finished runs: Markdown tables and figures a person can read.

* :mod:`~ser_modules.reports.run_report`: the report of one run, written at its end
  (``results.md``, ``confusion_matrix.png``);
* :mod:`~ser_modules.reports.papers`: the papers' published numbers and the names their
  tables give to models and upstreams;
* :mod:`~ser_modules.reports.runs`: finished runs read back from their ``results.json``
  (what they were, their protocol) for comparison;
* :mod:`~ser_modules.reports.tables`: tables over many runs in the papers' layouts, and the
  command ``python -m ser_modules.reports RUN...`` that writes them.
"""
