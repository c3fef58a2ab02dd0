"""The benchmark suite: `python -m syncd.bench [--size smoke|full] [--only NAME,...]`.

One module per benchmark, each a `run(ctx) -> BenchResult`. Every comparison runs side by
side in one run (this machine is shared and noisy), so figures are ratios where they can be.
The real program is measured as users meet it: `python -m syncd` subprocesses against the
bundled emulator on 127.0.0.1, with real files under a temporary directory.
"""
