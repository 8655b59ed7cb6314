"""fastood detectors inside the real pytorch-ood package (fastood.integrations.pytorch_ood).

Truths: the wrapped fastood detector's own scores (the adapter must return exactly their
negation), sklearn's roc_auc_score / roc_curve / precision_recall_curve for the metrics, and
pytorch-ood's own OODMetrics run on the adapter's outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pytorch_ood  # noqa: E402,F401  (the dev extra installs it: a missing package fails, not skips)
from pytorch_ood.api import Detector as PODDetector  # noqa: E402
from pytorch_ood.api import FeaturesDetector, RequiresFittingException  # noqa: E402
from pytorch_ood.metrics import OODMetrics  # noqa: E402
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve  # noqa: E402

from fastood import metrics as M  # noqa: E402
from fastood.bank import TextBank  # noqa: E402
from fastood.detectors import DETECTORS, KNN, create  # noqa: E402
from fastood.integrations.pytorch_ood import PytorchOODDetector, as_pytorch_ood  # noqa: E402
from tests.tiny import tiny_clip  # noqa: E402

D = 16
CLASSES = ["dog", "cat", "tree", "car"]


def _bank(groups: int = 3) -> TextBank:
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(4 + 9, D, generator=g), dim=1)
    return TextBank(emb, CLASSES, [f"neg{i}" for i in range(9)], groups=groups)


def _blobs(n_per: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(4, D, generator=g) * 3
    x = torch.cat([means[c] + torch.randn(n_per, D, generator=g) for c in range(4)])
    return x, torch.arange(4).repeat_interleave(n_per)


#: one features-only construction per registered detector; fitted on the blobs where needed
BUILDERS = {
    "neglabel": lambda: create("neglabel", bank=_bank()),
    "mcm": lambda: create("mcm", bank=_bank()),
    "knn": lambda: create("knn", k=2),
    "mahalanobis": lambda: create("mahalanobis", ridge=1e-3),
    "rmd": lambda: create("rmd", ridge=1e-3),
    "msp": lambda: create("msp", epochs=2, train_batch_size=32),
    "plp": lambda: create("plp", classes=CLASSES, feature_space="projection", epochs=2,
                          class_embeddings=torch.randn(4, D, generator=torch.Generator().manual_seed(3))),
    "interneg": lambda: create("interneg", bank=_bank(groups=1), test_time=False, groups=3, grouping="fixed",
                               progress=False),
}


def test_every_registered_detector_has_a_builder():
    assert set(DETECTORS) == set(BUILDERS), "a detector was added: give it a builder here"


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_adapter_is_a_pytorch_ood_detector_returning_minus_the_score(name):
    det = BUILDERS[name]()
    pod = PytorchOODDetector(det)
    assert isinstance(pod, FeaturesDetector) and isinstance(pod, PODDetector)
    assert pod.requires_fit == det.needs_fit
    x_train, y_train = _blobs()
    if det.needs_fit and not det.fitted:  # (InterNeg with a given static bank and no test-time part is ready as built)
        with pytest.raises(RequiresFittingException, match="fitted"):
            pod.predict_features(x_train[:3])
    assert pod.fit_features(x_train, y_train if det.needs_labels else None) is pod
    x_test, _ = _blobs(n_per=5, seed=1)
    out = pod.predict_features(x_test)
    assert out.shape == (20,) and torch.equal(out, -det.score_features(x_test))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_ood_metrics_on_adapter_outputs_equal_fastood_metrics(name):
    """pytorch-ood's OODMetrics on −S equal fastood.metrics (openood FPR, trapezoid AUPR) and sklearn."""
    pod = PytorchOODDetector(BUILDERS[name]())
    x_train, y_train = _blobs()
    pod.fit_features(x_train, y_train if pod.detector.needs_labels else None)
    x_id, _ = _blobs(n_per=15, seed=2)
    x_ood = torch.randn(50, D, generator=torch.Generator().manual_seed(9)) * 4
    metrics = OODMetrics()
    for xb, lab in ((x_id[:30], 0), (x_ood[:25], -1), (x_id[30:], 0), (x_ood[25:], -1)):  # streamed batches
        o = pod.predict_features(xb)
        metrics.update(o, torch.full(o.shape, lab, dtype=torch.int64))
    got = metrics.compute()
    s_id = pod.detector.score_features(x_id).double().numpy()
    s_ood = pod.detector.score_features(x_ood).double().numpy()
    ours = M.evaluate(s_id, s_ood, convention="openood", aupr_method="trapezoid")
    assert got["AUROC"] == pytest.approx(ours["auroc"], abs=1e-12)
    assert got["AUPR-IN"] == pytest.approx(ours["aupr_in"], abs=1e-12)
    assert got["AUPR-OUT"] == pytest.approx(ours["aupr_out"], abs=1e-12)
    assert got["FPR95TPR"] == pytest.approx(ours["fpr95"], abs=1e-12)
    # and against sklearn directly (ID = 1 on S; OOD = 1 on −S)
    is_id = np.r_[np.ones(s_id.size), np.zeros(s_ood.size)]
    s = np.r_[s_id, s_ood]
    assert got["AUROC"] == pytest.approx(roc_auc_score(is_id, s), abs=1e-12)
    p, r, _ = precision_recall_curve(1 - is_id, -s)
    assert got["AUPR-OUT"] == pytest.approx(auc(r, p), abs=1e-12)


def test_fpr95_convention_is_first_point_on_the_full_roc_curve():
    """pytorch-ood keeps every ROC threshold; fastood's "openood" drops intermediate points (sklearn's default).

    Twenty thresholds, each shared by one ID and one OOD score: the ROC curve is one straight diagonal.
    With every point kept the first TPR ≥ 0.95 is at FPR 0.95; with intermediate points dropped only
    (0,0) and (1,1) remain and the answer is 1.0.
    """
    s = np.arange(20.0)
    metrics = OODMetrics().update(torch.tensor(np.r_[-s, -s]), torch.tensor([0] * 20 + [-1] * 20))
    is_ood = np.r_[np.zeros(20), np.ones(20)]
    fpr_all, tpr_all, _ = roc_curve(is_ood, np.r_[-s, -s], drop_intermediate=False)
    fpr_drop, tpr_drop, _ = roc_curve(is_ood, np.r_[-s, -s])
    assert metrics.compute()["FPR95TPR"] == fpr_all[np.argmax(tpr_all >= 0.95)] == 0.95
    assert M.fpr_at_tpr(s, s, convention="openood") == fpr_drop[np.argmax(tpr_drop >= 0.95)] == 1.0


def test_fit_and_predict_on_images_through_a_loader():
    clip = tiny_clip()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 3, 32, 32, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.arange(12) % 3), batch_size=5)
    pod = as_pytorch_ood("knn", clip=clip, feature_space="projection")
    assert pod.fit(loader) is pod and pod.detector.fitted
    q = torch.randn(4, 3, 32, 32, generator=g)
    ref = KNN(clip, feature_space="projection").fit(loader)
    assert torch.allclose(pod.predict(q), -ref.score(q), atol=1e-6)
    assert torch.allclose(pod(q), pod.predict_features(ref.features(q)), atol=1e-6)  # __call__ forwards to predict
    assert pod.to("cpu") is pod and pod.device == torch.device("cpu")


def test_bad_input():
    with pytest.raises(TypeError, match="must be a fastood.detectors.Detector"):
        PytorchOODDetector(object())
    with pytest.raises(TypeError, match="only accepted with a detector name"):
        as_pytorch_ood(KNN(), k=3)
    with pytest.raises(ValueError, match="unknown detector"):
        as_pytorch_ood("bogus")
