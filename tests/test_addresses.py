"""The bulk address path agrees with the one-by-one path (email-validator) on every list."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailpipe.addresses import AddressValidator, InvalidAddress

PIECES = [
    "a",
    "B",
    "z9",
    ".",
    "..",
    "@",
    "\n",
    " ",
    "-",
    "+",
    "é",
    "xn--bcher-kva",
    "!",
    "[",
    "example.com",
    "Example.COM",
    "ex_ample.org",
    "localhost",
    "a" * 64,
    "b" * 200,
]


def one_by_one(validator: AddressValidator, addresses: list[Any]) -> list[str] | None:
    """What normalising each element gives; None when any is refused."""
    out = []
    for address in addresses:
        if not isinstance(address, str):
            return None
        try:
            out.append(validator.normalize(address))
        except InvalidAddress:
            return None
    return out


address_like = st.one_of(
    st.emails(),
    st.lists(st.sampled_from(PIECES), max_size=6).map("".join),
    st.builds(
        lambda local, domain: f"{local}@{domain}",
        st.text(alphabet="abcAB.-+_!\n", max_size=70),
        st.sampled_from(
            [
                "example.com",
                "EXAMPLE.org",
                "a.b",
                "-x.com",
                "x..com",
                "xn--bcher-kva.example",
                "b" * 250 + ".com",
                "bücher.de",
            ]
        ),
    ),
)


@given(st.lists(address_like, min_size=1, max_size=8))
@settings(max_examples=400, deadline=None)
@example(["xyz\na@b.com", "c@d.com"])
@example(["a@b.com\nxyz", "c@d.com"])
@example(["A@Example.COM", "a@EXAMPLE.com", "b@xn--bcher-kva.example"])
@example(["a" * 65 + "@example.com"])
def test_bulk_result_is_none_or_the_one_by_one_result(addresses: list[str]) -> None:
    bulk = AddressValidator().normalize_all(addresses)
    if bulk is not None:
        assert bulk == one_by_one(AddressValidator(), addresses)


@pytest.mark.parametrize(
    "addresses",
    [
        [f"user.{i}+tag@mail{i % 7}.example.com" for i in range(1000)],
        ["Ann@Example.COM", "bob@example.com", "c@EXAMPLE.com"],
        ["o'brien@example.ie", "x!#$%&*/=?^_`{|}~-@example.net"],
    ],
)
def test_plain_lists_take_the_bulk_path(addresses: list[str]) -> None:
    validator = AddressValidator()
    bulk = validator.normalize_all(addresses)
    assert bulk is not None
    assert bulk == one_by_one(validator, addresses)


@pytest.mark.parametrize(
    "addresses",
    [[], ["a@example.com", 7], ["bad@"], [" padded@example.com"], ["ünï@example.com"]],
)
def test_anything_unusual_is_left_to_the_one_by_one_path(addresses: list[Any]) -> None:
    assert AddressValidator().normalize_all(addresses) is None
