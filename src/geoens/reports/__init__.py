"""Reports: the result tables and figures of a run.

- :mod:`geoens.reports.tables`    result tables (CSV, Markdown, LaTeX) and the training table;
- :mod:`geoens.reports.figures`   figures: RvA curves, LS buckets, probability maps;
- :mod:`geoens.reports.coverage`  coverage tables and the coverage figure of calibrated regions.

May import: geoens.core, geoens.data, geoens.geo, geoens.evaluation.
"""
