"""Hypothesis strategies for the AMQP codec tests, built from the generated spec."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from postoffice.amqp import BASIC_PROPERTIES, Method

# At most 4 UTF-8 bytes a character, so 63 characters always fit a shortstr.
shortstrs = st.text(max_size=63)
table_keys = shortstrs

decimals = st.builds(
    lambda value, scale: Decimal(f"{value}E-{scale}"),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(0, 255),
)
timestamps = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(9999, 12, 31, 23, 59, 59),
    timezones=st.just(UTC),
).map(lambda moment: moment.replace(microsecond=0))

# Every value type a field table holds, in the form decoding gives back.
scalar_values = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.sampled_from([-(2**63), -(2**31), -129, -128, 127, 128, 2**15, 2**31, 2**63 - 1])
    | st.floats(allow_nan=False)
    | decimals
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | timestamps
)
field_values = st.recursive(
    scalar_values,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(table_keys, children, max_size=4)
    ),
    max_leaves=12,
)
tables = st.dictionaries(table_keys, field_values, max_size=5)

ARGUMENT_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "bit": st.booleans(),
    "octet": st.integers(0, 2**8 - 1),
    "short": st.integers(0, 2**16 - 1),
    "long": st.integers(0, 2**32 - 1),
    "longlong": st.integers(0, 2**64 - 1),
    "timestamp": st.integers(0, 2**64 - 1),
    "shortstr": shortstrs,
    "longstr": st.binary(max_size=40),
    "table": tables,
}


def methods_of(cls: type[Method]) -> st.SearchStrategy[Method]:
    """Instances of ``cls`` with arbitrary valid argument values."""
    return st.builds(cls, **{name: ARGUMENT_VALUES[kind] for name, kind in cls.FIELDS})


PROPERTY_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "shortstr": shortstrs,
    "octet": st.integers(0, 255),
    "table": tables,
    "timestamp": timestamps,
}
property_dicts = st.fixed_dictionaries(
    {}, optional={name: PROPERTY_VALUES[kind] for name, kind, _ in BASIC_PROPERTIES}
)
