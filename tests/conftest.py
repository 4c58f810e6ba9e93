"""Shared test settings: a headless plot backend and a private data folder per test session."""
import os

import matplotlib

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")
