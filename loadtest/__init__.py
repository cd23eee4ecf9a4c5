"""Load tests and benchmarks for the DCGAN service.

python -m loadtest.run            sweep a server (--host, or ours) with locust: the capacity under a p99 bound, report.md + plots
                                  (--models N: also ours serving N models, users split between them, per-model rows)
python -m loadtest.swap           version swaps under load: admin load time, time to the new version, failures, images per version
python -m loadtest.backend_bench  in-process images/s per runtime and batch size (the ceiling)
python -m loadtest.baseline       the simple FastAPI + torch eager server it is compared against
loadtest/locustfile.py            the locust user (POST /sample, random seeds, n mix; answers ok, refused or failed; open loop)
"""
