"""Named pytest-xdist groups (the README's test command runs two workers with `--dist loadgroup`); a group's
tests run one after another on one worker."""

from __future__ import annotations

import pytest

# Tests that hold a full-size model (6-15 GB: 0.6b-base in the reference, a real port beside it): two at once
# would not fit in 24 GiB.
full_size = pytest.mark.xdist_group("full-size")
