"""Drift statistics, the inference log, the retrain policy and the DriftMonitor actor."""
