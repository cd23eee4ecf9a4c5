"""Helpers every stage's tools share, torch-free and stdlib-only (psutil aside, for common.server).

common.cli     UserError and one-line CLI errors
common.files   atomic writes and JSON reads
common.server  start, wait for and stop a server on a free loopback port (load tests and tests)
"""
