"""``compass demo``: a tracker, a board server and a real model on this machine.

The model (``digits.onnx``) and its samples (``samples.npz``) are package data, made by
``scripts/train_demo_model.py`` from scikit-learn's digits.
"""

from .daemons import Daemon, DaemonError
from .runner import KEY, MODEL, SAMPLES, DemoError, load_samples, run_demo

__all__ = ["KEY", "MODEL", "SAMPLES", "Daemon", "DaemonError", "DemoError", "load_samples",
           "run_demo"]
