"""Benchmark scripts behind ``parazoo bench <name>``; each module has ``main(argv)``."""
