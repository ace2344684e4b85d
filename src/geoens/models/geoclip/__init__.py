"""GeoCLIP as the second base model, scored on the fine S2 cells (DESIGN section 4).

Modules: :mod:`~geoens.models.geoclip.location` (location encoder, GPS gallery, shipped weights),
:mod:`~geoens.models.geoclip.cells` (fine-cell embeddings cache, scoring),
:mod:`~geoens.models.geoclip.towers` (image towers, CLIP), :mod:`~geoens.models.geoclip.training` (contrastive
tower training, tower files) and :mod:`~geoens.models.geoclip.stage` (the workflow stages: tower training and
prediction glue).

GeoCLIP (NeurIPS 2023) embeds a GPS point with a *location encoder*: the point is projected
with the Equal Earth projection, encoded with random Fourier features at three scales
(``sigma = 2^0, 2^4, 2^8``), each scale goes through its own MLP "capsule", and the three 512-d outputs are
summed (the hierarchy). An image tower maps an image into the same space; the score of a location is
``exp(logit_scale) * cos(image embedding, location embedding)`` and GeoCLIP's ``predict()`` takes the
softmax over its 100K GPS gallery, re-embedding the gallery on every call.

Here the candidate locations are the fine S2 cells (each cell's mean training location, as the paper does),
so a probability vector lives on the same classes as GeoEstimation's:
``p = softmax(scale * cos(image embedding, location embedding of each fine cell's mean location))``.
The cell embeddings are computed once per partition and cached in a Parquet file
(:func:`geoens.models.geoclip.cells.cell_embeddings`), then reused for every image.

The location encoder here mirrors ``geoclip.model.location_encoder.LocationEncoder`` layer for layer (same
state-dict keys) and loads the weights file shipped in the PyPI ``geoclip`` wheel, without importing the
``geoclip`` package, whose import pulls in ``transformers`` and whose ``GeoCLIP()`` downloads CLIP.
``tests/test_geoclip.py`` checks that both give the same embeddings.

Two image towers:

* ``clip``: GeoCLIP's own, CLIP ViT-L/14 (``transformers``, from the local Hugging Face cache only) plus the
  shipped MLP (:class:`ClipImageTower`). A missing cache raises :class:`ClipNotCachedError` naming the model
  and the download command.
* ``trained``: a small timm backbone plus a projection to 512-d, trained here with GeoCLIP's contrastive
  objective into the *frozen* location-embedding space (:class:`TrainedImageTower`, :func:`train_tower`);
  the demo world uses it, since no pretrained weights can be downloaded there.
"""
