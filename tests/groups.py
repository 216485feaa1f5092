"""How tests share the machine. The README's test command runs two pytest-xdist workers (`--dist loadgroup`):
a named group's tests run one after another on one worker. Tests marked `serial` run afterwards, alone."""

from __future__ import annotations

import pytest

# Tests that hold a full-size model (6-15 GB: 0.6b-base in the reference, a real port beside it): two at once
# would not fit in 24 GiB.
full_size = pytest.mark.xdist_group("full-size")

# Tests whose assertions hold timings (harness overhead, injected delays, a planted slowdown, the rate a
# server holds): with another worker's model on the other core they would measure the neighbour, not the code.
serial = pytest.mark.serial
