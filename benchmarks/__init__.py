"""Speed and quality benchmarks (not tests): `python -m benchmarks.quality`, `python -m benchmarks.eval_speed`."""
