"""`imgcls serve`: an HTTP service — REST, the Open Inference Protocol v2, Prometheus
metrics — with dynamic batching in front of each model."""

from imgcls.serve.app import StartupError, create_app, run
from imgcls.serve.service import ServeConfig

__all__ = ["ServeConfig", "StartupError", "create_app", "run"]
