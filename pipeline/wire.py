"""The wire shape of a well-formed message, for the decoder's fast path (:func:`pipeline.decode.decode_message`).

msgspec decodes a message straight into :class:`WireEvent` objects, checking each field's JSON type in C
as it parses, without building a dict per event (orjson's ``loads`` then seven ``dict.get`` cost about
twice as much). It is only a fast path: anything :data:`WIRE_DECODER` refuses (a field of another JSON
type, a missing or unknown field, an unknown event type, a float, a nested array, malformed JSON or UTF-8)
goes to the general decoder, which reads the message with orjson and gives each element its precise
reason.

Unknown fields are refused so that what this path accepts is a subset of what the general path accepts,
with the same values: msgspec would skip an unknown field's value without reading it as orjson does (an
integer past 64 bits, or nesting deeper than orjson allows, makes orjson refuse the whole message).

Not compiled (mypyc cannot compile a class with msgspec's metaclass); the compiled decoder reads the
fields through :data:`FIELDS_OF`.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec
from msgspec import UNSET, UnsetType
from msgspec.structs import astuple

# The contract's event types (pipeline.events.TYPE_TOPIC; a test checks they agree). msgspec gives each
# type's one interned string: no string to allocate per event, and identity when it is compared.
WireType = Literal["like", "reply", "mention", "follow", "unfollow", "followers"]


class WireEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One event object as sent: each field with the JSON types the contract allows, and no other field.
    The fields' order is :data:`FIELDS_OF`'s (the decoder reads them by position).

    ``followers`` is ``UNSET`` when the object has no such key (``null`` is ``None``): an engagement that
    carries one is the general path's to judge.
    """

    event_id: str
    type: WireType
    ts: int | str
    account_id: str
    actor_id: str | None = None
    post_id: str | None = None
    in_reply_to: str | None = None
    followers: int | UnsetType | None = UNSET


# A message is one event object or an array of them. Raises msgspec.DecodeError (msgspec.ValidationError
# for a well-formed JSON of another shape) or UnicodeDecodeError.
WIRE_DECODER: Final = msgspec.json.Decoder(list[WireEvent] | WireEvent)
ABSENT: Final = UNSET  # what WireEvent.followers is when the object has no "followers"
# A WireEvent's fields as a tuple, in declaration order: one C call where eight attribute reads from
# compiled code cost about five times as much.
FIELDS_OF: Final = astuple
