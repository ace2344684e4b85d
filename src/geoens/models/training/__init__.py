"""The training runtime shared by :mod:`~geoens.models.predictors` (LS/LC/GeoEst) and the GeoCLIP tower.

- :mod:`geoens.models.training.runtime`: device resolution, process placement, seeding, autocast, early
  stopping, the per-epoch metrics table and the shard-index cache glue.
- :mod:`geoens.models.training.predictions`: the prediction Parquet schema, its streaming writer and
  ``skipped.json``.
- :mod:`geoens.models.training.config`: the trainer settings and the rows each predictor trains on.
- :mod:`geoens.models.training.inputs`, :mod:`geoens.models.training.loop`: the named steps of
  :func:`geoens.models.predictors.train_model` (data; model and optimisation; resume; epochs).
- :mod:`geoens.models.training.plots`: training curves and the validation confusion matrix.

Checkpoint files and stop signals are :mod:`geoens.models.checkpoint`'s.
"""
