"""The linear probe: an L2-regularised multinomial logistic regression (scikit-learn's ``LogisticRegression``,
lbfgs) on frozen image features, returned as one weight row and bias per class.

The one fitting used by few-shot evaluation (`treeclip.eval.fewshot`, ``linear_probe``) and by probe heads
(`treeclip.predict.probe`, ``treeclip probe``); it lives in `model` because eval may not import predict.
"""

from __future__ import annotations

import numpy as np


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, n_classes: int, *, c: float, max_iter: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(weight ``[n_classes, dim]``, bias ``[n_classes]``), float64, so that ``argmax(features @ weight.T + bias)``
    is scikit-learn's prediction and its softmax the class probabilities. `labels` are class indices: every
    index in ``range(n_classes)`` must occur, at least two classes (ValueError otherwise); `c` is the inverse
    L2 strength."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - heavy; imported when fitting

    present = np.unique(labels)
    if len(present) < 2 or not np.array_equal(present, np.arange(n_classes)):
        raise ValueError(f"a linear probe needs examples of each of its {n_classes} (at least 2) classes; "
                         f"labels hold {len(present)} distinct classes")
    model = LogisticRegression(C=c, max_iter=max_iter).fit(features, labels)
    weight = np.zeros((n_classes, features.shape[1]))
    bias = np.zeros(n_classes)
    if n_classes == 2:  # scikit-learn keeps one row: the logit of class 1 against class 0 (whose row stays 0)
        weight[1], bias[1] = model.coef_[0], model.intercept_[0]
    else:
        weight[:], bias[:] = model.coef_, model.intercept_
    return weight, bias
