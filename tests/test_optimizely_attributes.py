"""The bucketer's `a=` / `--attr` parser against the seed's cases (with the
expectations issue 5 sets: errors name the pair; quoted values keep : and ,)."""

from __future__ import annotations

import json

import pytest

from optimizely_integration.attributes import AttributeParseError, parse_attribute_args, parse_attributes
from tests.optimizely_support import FIXTURES

CASES = json.loads((FIXTURES / "attribute_parsing_cases.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["a"] or "<empty>" for c in CASES])
def test_attribute_cases(case: dict) -> None:
    if "error_pair" in case:
        with pytest.raises(AttributeParseError) as info:
            parse_attributes(case["a"])
        assert info.value.pair == case["error_pair"]
        assert repr(case["error_pair"]) in str(info.value)  # the message names the pair
    else:
        parsed = parse_attributes(case["a"])
        assert parsed == case["parsed"]
        # Types matter to audiences: 56 must stay an int, not "56" or 56.0.
        assert [type(v) for v in parsed.values()] == [type(v) for v in case["parsed"].values()]


def test_seed_example_matches_the_seed_response() -> None:
    seed_query = "tier:\"platinum\",member_since_days:56"  # apigw_proxy_event.json
    assert parse_attributes(seed_query) == {"tier": "platinum", "member_since_days": 56}


def test_none_is_empty() -> None:
    assert parse_attributes(None) == {}


def test_cli_args_merge_several_attr_options() -> None:
    assert parse_attribute_args(['tier:"gold"', "n:1,ok:true"]) == {"tier": "gold", "n": 1, "ok": True}
    with pytest.raises(AttributeParseError) as info:
        parse_attribute_args(['tier:"gold"', 'tier:"platinum"'])
    assert "duplicate" in str(info.value)
    with pytest.raises(AttributeParseError) as info:
        parse_attribute_args(["n:1", "tier:platinum"])
    assert info.value.pair == "tier:platinum"
