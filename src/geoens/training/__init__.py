"""The training runtime shared by :mod:`geoens.train` (the LS/LC/GeoEst predictors) and the GeoCLIP tower.

- :mod:`geoens.training.runtime`: device resolution, process placement, seeding, autocast, early stopping,
  the per-epoch metrics table and the shard-index cache glue.
- :mod:`geoens.training.predictions`: the prediction Parquet schema, its streaming writer and
  ``skipped.json``.
- :mod:`geoens.training.config`: the trainer settings and the rows each predictor trains on.
- :mod:`geoens.training.inputs`, :mod:`geoens.training.loop`: the named steps of
  :func:`geoens.train.train_model` (data; model and optimisation; resume; epochs).
- :mod:`geoens.training.plots`: training curves and the validation confusion matrix.

Checkpoint files and stop signals are :mod:`geoens.checkpoint`'s.
"""
