"""fastood inside the tools people already use.

Each submodule imports its host package only when it is imported itself, so
``import fastood`` never needs them:

* :mod:`fastood.integrations.pytorch_ood` — every fastood detector as a real
  ``pytorch_ood.api.Detector`` (``pip install pytorch-ood``).
* :mod:`fastood.integrations.open_clip_train` — :class:`fastood.nn.CMALoss` as the loss
  of open_clip's own trainer, ``open_clip_train.main`` (ships in the ``open_clip_torch``
  wheel; needs ``pandas`` and ``braceexpand``).

WebDataset shards are read by :mod:`fastood.shards`; log-friendly progress is
:mod:`fastood.progress`; the papers' benchmark protocols are :mod:`fastood.benchmarks`.
"""
