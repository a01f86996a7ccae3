"""PassOption: pass options validated on every assignment, with per-instance values."""

import pytest

from milcompress.errors import ConfigError
from milcompress.passes.options import PassOption, optional, parse_bool, parse_int, parse_path


class _Pass:
    flag = PassOption(parse_bool, default=True)
    count = PassOption(optional(lambda name, value: parse_int(name, value, 0)))
    path = PassOption(parse_path)


def test_defaults_until_set_and_instances_do_not_share_values():
    first, second = _Pass(), _Pass()
    assert (first.flag, first.count, first.path) == (True, None, None)
    first.flag, first.count, first.path = "false", "12", "report.json"
    assert (first.flag, first.count, first.path) == (False, 12, "report.json")
    assert (second.flag, second.count) == (True, None)
    first.count, first.path = "", ""
    assert (first.count, first.path) == (None, None)


def test_a_bad_value_names_the_option_and_keeps_the_old_one():
    instance = _Pass()
    instance.count = 3
    with pytest.raises(ConfigError, match="count: expected an integer >= 0"):
        instance.count = "-1"
    assert instance.count == 3
    assert isinstance(_Pass.flag, PassOption)  # the class attribute is the descriptor
