"""The control plane: what starts, moves or replaces things on a cluster.

Deploying the Serve app (`deploy`, `up`, `rollout`), the DriftMonitor actor, the Jobs API, the
train-and-register orchestration, the pipeline and retrain jobs, local heads and the demo. The data
plane (`rayloop.serving`, `rayloop.monitoring`) never imports this package.
"""
