"""Evaluation and calibration: the methods (ensembles), Recall vs Area, metrics and calibrated regions.

- :mod:`geoens.evaluation.methods`    the methods and Alg. 1 class scores, the urban prior;
- :mod:`geoens.evaluation.rva`        Alg. 2-3 on atom groups (dense engine), per-image results, grid top-1;
- :mod:`geoens.evaluation.rva_fast`   the threshold-form engine and its torch backend;
- :mod:`geoens.evaluation.evaluator`  every method on batches of images (``Evaluator``);
- :mod:`geoens.evaluation.testset`    test-set evaluation: prediction readers, the per-image table;
- :mod:`geoens.evaluation.metrics`    Recall vs Area, GCD accuracy, balanced sets, bootstrap intervals;
- :mod:`geoens.evaluation.conformal`  upper sets and conformal quantiles;
- :mod:`geoens.evaluation.tempered`   the tempered ensemble's weights (fit, apply);
- :mod:`geoens.evaluation.calibrate`  calibration: conformal scores per method, thresholds, tempered fits.

It reads predictions from their Parquet files and never imports :mod:`geoens.models`.

May import: geoens.core, geoens.data, geoens.geo.
"""
