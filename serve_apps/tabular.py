"""The Serve application for the registered tabular model.

    serve run configs/serve/tabular.yaml          # or: serve deploy configs/serve/tabular.yaml
    rayloop serve                                  # the same app, deployed from the rayloop config

`app_builder(TabularAppArgs)` reads the rayloop config (serving section) and returns the
bound application: one autoscaling deployment, `TabularServer`, that validates, batches and
scores, and serves `serving.model_ref` (the `champion` alias by default).
"""

# no `from __future__ import annotations`: Serve reads the builder's annotation at runtime to
# turn a config file's `args:` into TabularAppArgs

from ray.serve import Application

from rayloop.serving.app_args import ServerArgs, TabularAppArgs, deployment_options
from rayloop.serving.server import TabularServer

__all__ = ["TabularAppArgs", "app_builder"]


def app_builder(args: TabularAppArgs) -> Application:
    if not isinstance(args, TabularAppArgs):  # a plain dict from an older Serve or a caller
        args = TabularAppArgs.model_validate(args)
    config = args.source().load()
    server_args = ServerArgs.from_config(config, tracking_uri=args.tracking_uri)
    return TabularServer.options(**deployment_options(config.serving, args.model_ref)).bind(server_args.model_dump())
