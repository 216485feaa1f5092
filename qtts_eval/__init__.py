"""qtts-eval: benchmarking and validation suite for Qwen3-TTS-12Hz-0.6B-Base implementations."""

import os

# Intel MKL (torch's CPU BLAS on x86) may pick a different kernel for the same call depending on how the
# buffers happen to be aligned, so two runs of one request can differ in the last bits, and parity insists
# on a bit-identical reference. AUTO keeps one code path per CPU. It must be set before torch loads MKL,
# hence here; a value the user set wins.
os.environ.setdefault("MKL_CBWR", "AUTO")
