"""Models and their training: the LS/LC/GeoEst predictors, GeoCLIP, and the runtime both trainers share.

- :mod:`geoens.models.datasets`    image sources (shard index, folders), decoding, augmentation, datasets;
- :mod:`geoens.models.imagecache`  the decoded-image cache of small training images, batched augmentation;
- :mod:`geoens.models.nets`        timm backbones (offline weights), multi-head classifier, hierarchy heads;
- :mod:`geoens.models.checkpoint`  checkpoint files, stop signals (SIGTERM/SIGUSR1 -> exit 75), resumable
  samplers;
- :mod:`geoens.models.training`    the training runtime (device, seeding, inputs, epochs, prediction files);
- :mod:`geoens.models.predictors`  the LS/LC/GeoEst predictors: ``train_model``, prediction, their CLI
  (``python -m geoens.models.predictors``);
- :mod:`geoens.models.geoclip`     GeoCLIP scored on S2 cells (location encoder, cell cache, towers, stages).

This is the only subpackage that imports torch at module level; outside it only :mod:`geoens.apps` (deferred,
inside the commands that need it) and the torch backend of :mod:`geoens.evaluation.rva_fast` (deferred) do,
so configs, masks, evaluation, calibration and reports run without torch.

May import: geoens.core, geoens.data, geoens.geo.
"""
