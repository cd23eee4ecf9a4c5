"""Load tests and benchmarks for the DCGAN service.

python -m loadtest.run            start the service, sweep users with locust, write report.md + plots
python -m loadtest.backend_bench  in-process images/s per runtime and batch size (the ceiling)
python -m loadtest.baseline       the simple FastAPI + torch eager server it is compared against
loadtest/locustfile.py            the locust user (POST /sample, random seeds, n mix, checked responses)
"""
