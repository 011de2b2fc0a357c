"""Sans-IO AMQP 0-9-1 codec: bytes in, methods and properties out, and back.

The method classes, constants and :data:`METHODS` are generated from RabbitMQ's
spec (``tools/codegen.py``); the codecs are driven by each class's ``FIELDS``.
"""

from . import _spec
from ._method_base import Method
from ._spec import *  # noqa: F403 - the generated constants and method classes
from ._table import decode_array, decode_table, encode_array, encode_table, encode_value
from .methods import decode_method, encode_method, encode_method_frame
from .properties import BasicProperties, decode_properties, encode_properties

# Frame reader exports (frames.py) go here.

__all__ = [
    "BasicProperties",
    "Method",
    "decode_array",
    "decode_method",
    "decode_properties",
    "decode_table",
    "encode_array",
    "encode_method",
    "encode_method_frame",
    "encode_properties",
    "encode_table",
    "encode_value",
]
__all__ += _spec.__all__
