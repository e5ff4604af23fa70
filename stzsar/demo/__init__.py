"""The embedded demo: a synthetic zero-shot action benchmark (``stzsar demo``).

- :mod:`stzsar.demo.actions`: the classes (colour x motion, invented names, descriptions), the
  frame drawing and the dataset written as H.264 files with BIKE-style lists;
- :mod:`stzsar.demo.cached`: the dataset's clips decoded once and kept in memory;
- :mod:`stzsar.demo.diagnostics`: what the STI does on the test videos (spread of S_sp, S_temp);
- :mod:`stzsar.demo.runner`: :func:`run_demo`, the whole run and its report.
"""
