"""The logit and softmax every model and the evaluator share."""

import numpy as np

from meddiag_pipelines.probability import CLIP, logit, softmax


def test_logit_is_finite_at_certainty_and_inverts_the_sigmoid():
    p = np.array([0.0, 1e-9, 0.25, 0.5, 0.9, 1.0])
    z = logit(p)
    assert np.isfinite(z).all() and z[0] == z[1] == logit(CLIP) and z[3] == 0
    np.testing.assert_allclose(1 / (1 + np.exp(-z[2:5])), p[2:5])


def test_softmax_rows_sum_to_one_without_overflow():
    z = np.array([[1000.0, 1000.0, 0.0], [0.0, np.log(3.0), 0.0]])
    p = softmax(z)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0], [0.2, 0.6, 0.2]], atol=1e-12)
