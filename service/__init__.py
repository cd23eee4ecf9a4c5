"""The BentoML service: `bentoml serve service:svc` (see service/entry.py for the API).

`svc` is loaded on first access (PEP 562), so importing a light module such as `service.images`
does not build the services or touch the BentoML model store.
"""


def __getattr__(name: str):
    if name == "svc":
        from service.entry import svc

        return svc
    raise AttributeError(f"module 'service' has no attribute {name!r}")
