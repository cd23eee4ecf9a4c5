"""The service's container images, from `bentoml build`'s output: `python -m deploy.image --help`."""
