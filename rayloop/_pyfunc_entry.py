"""Executed by MLflow when it loads a rayloop model (models from code); never imported by rayloop."""

import mlflow

from rayloop.pyfunc import BundleModel

mlflow.models.set_model(BundleModel())
