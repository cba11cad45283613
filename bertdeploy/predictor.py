"""`from bertdeploy.predictor import Predictor`: the predictor lives in `bertdeploy.runtime.predictor`."""

from bertdeploy.runtime.predictor import Prediction, Predictor

__all__ = ["Prediction", "Predictor"]
