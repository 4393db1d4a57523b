"""Calico's selector language: tables for the semantics and the errors, properties for the parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confgen.selector import All, And, Compare, Has, In, Not, Or, SelectorError, parse

LABELS = {"rack": "r1", "role": "route-reflector", "zone": "eu-west-1a", "empty": ""}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("all()", True),
        ("has(rack)", True),
        ("has(missing)", False),
        ("!has(missing)", True),
        ("!has(rack)", False),
        ("rack == 'r1'", True),
        ('rack == "r2"', False),
        ("missing == 'x'", False),
        ("rack != 'r2'", True),
        ("rack != 'r1'", False),
        ("missing != 'x'", True),  # absent labels satisfy != (Calico's rule)
        ("rack in {'r1', 'r2'}", True),
        ("rack in {'r3'}", False),
        ("rack in {}", False),
        ("missing in {'x'}", False),
        ("rack not in {'r2', 'r3'}", True),
        ("rack not in {'r1'}", False),
        ("missing not in {'x'}", True),  # absent labels satisfy not in
        ("zone contains 'west'", True),
        ("zone starts with 'eu-'", True),
        ("zone ends with '1b'", False),
        ("missing contains ''", False),
        ("empty == ''", True),
        ("has(empty)", True),
        ("rack == 'r1' && role == 'route-reflector'", True),
        ("rack == 'r1' && role == 'worker'", False),
        ("rack == 'r9' || role == 'route-reflector'", True),
        ("!(rack == 'r1')", False),
        ("!rack == 'r1'", False),  # ! applies to the whole comparison
        ("!!has(rack)", True),
        # && binds tighter than ||: true || (false && false) = true, (true || false) && false = false
        ("has(rack) || has(x) && has(y)", True),
        ("(has(rack) || has(x)) && has(y)", False),
        ("!has(x) && !has(y) || has(z)", True),
        ("  rack=='r1'&&has(zone)  ", True),
        ("in == 'x'", False),  # keywords are labels where a label is expected
        ("kubernetes.io/hostname != 'node-1'", True),
    ],
)
def test_semantics(selector, expected):
    assert parse(selector).matches(LABELS) is expected


@pytest.mark.parametrize(
    ("selector", "position", "problem"),
    [
        ("rack", 4, "expected an operator (==, !=, in, not in, ...) after 'rack', found the end"),
        ("rack ==", 7, "expected a quoted string, found the end"),
        ("rack == r1", 8, "expected a quoted string, found 'r1'"),
        ("rack == 'r1", 8, "unterminated string"),
        ("has(rack", 8, "expected ')' after the label, found the end"),
        ("has()", 4, "expected a label, found ')'"),
        ("all(", 4, "expected ')' after 'all(', found the end"),
        ("(has(a)", 7, "expected ')', found the end"),
        ("has(a))", 6, "unexpected ')'"),
        ("has(a) has(b)", 7, "unexpected 'has'"),
        ("has(a) &&", 9, "expected a label, found the end"),
        ("a in {'x' 'y'}", 10, "expected ',' or '}', found \"'y'\""),
        ("a in 'x'", 5, "expected '{', found \"'x'\""),
        ("a = 'x'", 2, "unexpected character '='"),
        ("a == 'x' ; b", 9, "unexpected character ';'"),
        ("a == 'x' & b", 9, "unexpected character '&'"),
        ("a not 'x'", 2, "expected an operator (==, !=, in, not in, ...) after 'a', found 'not'"),
        ("x" * 5000, 4096, "longer than 4096 characters"),
    ],
)
def test_syntax_errors_say_what_and_where(selector, position, problem):
    with pytest.raises(SelectorError) as info:
        parse(selector)
    assert (info.value.position, info.value.problem) == (position, problem)
    assert f"at character {position} of " in str(info.value)
    assert len(str(info.value)) < 200  # the selector is quoted cut short


def test_non_strings_are_refused():
    with pytest.raises(SelectorError):
        parse(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- properties

KEYS = st.sampled_from(["a", "b", "rack", "kubernetes.io/hostname", "in", "has", "x-y_z.1"])
VALUES = st.text(alphabet="ab1 -_.'", max_size=4).filter(lambda v: not ('"' in v and "'" in v))


def _leaves() -> st.SearchStrategy:
    return st.one_of(
        st.just(All()),
        st.builds(Has, KEYS),
        st.builds(
            Compare, KEYS, st.sampled_from(["==", "!=", "contains", "starts with", "ends with"]), VALUES
        ),
        st.builds(In, KEYS, st.frozensets(VALUES, max_size=3), st.booleans()),
    )


TREES = st.recursive(
    _leaves(),
    lambda children: st.one_of(
        st.builds(Not, children),
        st.builds(And, st.lists(children, min_size=2, max_size=3).map(tuple)),
        st.builds(Or, st.lists(children, min_size=2, max_size=3).map(tuple)),
    ),
    max_leaves=8,
)
LABEL_SETS = st.dictionaries(
    st.sampled_from(["a", "b", "rack", "in"]), st.sampled_from(["", "a", "b1", "ab"])
)


@settings(max_examples=300, deadline=None)
@given(TREES)
def test_printing_then_parsing_gives_the_same_tree(tree):
    assert parse(str(tree)) == tree


@settings(max_examples=300, deadline=None)
@given(TREES, TREES, LABEL_SETS)
def test_boolean_laws_hold(left, right, labels):
    def value(text):
        return parse(text).matches(labels)

    a, b = str(left), str(right)
    assert value(f"!(({a}) && ({b}))") == value(f"!({a}) || !({b})")  # De Morgan
    assert value(f"!(({a}) || ({b}))") == value(f"!({a}) && !({b})")
    assert value(f"({a}) || ({b})") == value(f"({b}) || ({a})")
    assert value(f"!!({a})") == left.matches(labels)


@settings(max_examples=300, deadline=None)
@given(KEYS, VALUES, st.frozensets(VALUES, max_size=3), LABEL_SETS)
def test_negated_operators_are_negations(key, value, values, labels):
    items = ", ".join(f'"{v}"' if '"' not in v else f"'{v}'" for v in sorted(values))
    quoted = f'"{value}"' if '"' not in value else f"'{value}'"
    assert parse(f"{key} != {quoted}").matches(labels) != parse(f"{key} == {quoted}").matches(labels)
    assert parse(f"{key} not in {{{items}}}").matches(labels) != parse(f"{key} in {{{items}}}").matches(
        labels
    )
    assert parse(f"!has({key})").matches(labels) == (key not in labels)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="ab(){}!&|=' \",in", max_size=30))
def test_arbitrary_text_parses_or_fails_cleanly(text):
    try:
        tree = parse(text)
    except SelectorError as exc:
        assert 0 <= exc.position <= len(text)
    else:
        assert parse(str(tree)) == tree
