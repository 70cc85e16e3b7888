"""normlab.util: the helpers every layer may import."""
import doctest

import normlab.util
from normlab.util import duration


def test_duration_known_answers():
    assert [duration(s) for s in (0, 0.4, 59.5, 60, 61, 3599, 3600, 3661, 86399)] == \
        ["0s", "0s", "1m00s", "1m00s", "1m01s", "59m59s", "1h00m", "1h01m", "23h59m"]


def test_util_doctests_run():
    result = doctest.testmod(normlab.util)
    assert result.attempted >= 1 and result.failed == 0
