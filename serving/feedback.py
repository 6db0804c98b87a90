"""``POST /feedback`` bodies: a verdict on an explanation or a click, read by the records' own rules.

The request models are derived from the records (:func:`streams.record_schemas.request_model`), so the API
accepts exactly what its schema declares and what ingest accepts.
"""

from __future__ import annotations

import time
import uuid

import orjson

from streams.record_schemas import request_model
from streams.records import MAX_EVENT_BYTES, Choice, ExplanationFeedback, Interaction, InvalidRecord, from_dict

#: Interaction types a client may report through ``/feedback`` (purchases come from the shop's own feed).
FEEDBACK_INTERACTIONS = ("click",)
#: Record fields a ``/feedback`` body may leave out: the worker fills them in.
SERVER_FILLED = ("event_id", "ts")


class FeedbackRejected(Exception):
    """A feedback body the worker will not accept; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_feedback(body: bytes, now: float | None = None) -> ExplanationFeedback | Interaction:
    """Validate a ``/feedback`` body into the record it describes.

    A body with ``explanation_id`` is a verdict on an explanation (:class:`ExplanationFeedbackIn`); one
    with ``type`` is a click (:class:`ClickIn`). Both are read by their record's own rules, the ones
    ingest applies, so the API accepts exactly what its OpenAPI schema says. ``event_id`` and ``ts`` are
    filled in when the client leaves them out (or sends null); a field the body's record does not have
    is refused rather than dropped.

    >>> parse_feedback(b'{"user_id":"u1","item_id":"i1","type":"click"}', now=1.3e9).type
    'click'
    >>> parse_feedback(b'{"user_id":"u1"}')
    Traceback (most recent call last):
    ...
    serving.feedback.FeedbackRejected: body must be explanation feedback (with explanation_id) or a click (with type)
    >>> parse_feedback(b'{"user_id":"u1","item_id":"i1","type":"click","helpfull":true}')
    Traceback (most recent call last):
    ...
    serving.feedback.FeedbackRejected: unknown field 'helpfull' for a click
    """
    if len(body) > MAX_EVENT_BYTES:
        raise FeedbackRejected(413, f"body of {len(body)} bytes exceeds the {MAX_EVENT_BYTES}-byte limit")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FeedbackRejected(400, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise FeedbackRejected(422, "body must be a JSON object")
    if "explanation_id" in data:
        record_type, model, kind = ExplanationFeedback, ExplanationFeedbackIn, "explanation feedback"
    elif "type" in data:
        record_type, model, kind = Interaction, ClickIn, "a click"
    else:
        raise FeedbackRejected(422, "body must be explanation feedback (with explanation_id) or a click (with type)")
    unknown = [name for name in data if name not in model.model_fields]
    if unknown:
        raise FeedbackRejected(422, f"unknown field {unknown[0][:40]!r} for {kind}")
    data = {name: value for name, value in data.items() if value is not None}
    try:
        if record_type is Interaction and "type" in data:
            CLICK_TYPE.check(data["type"], "type")
        return from_dict(record_type, {"event_id": uuid.uuid4().hex, "ts": time.time() if now is None else now,
                                       **data})
    except InvalidRecord as exc:
        raise FeedbackRejected(422, str(exc)) from None


#: ``/feedback`` bodies: the records' own fields and rules (``streams/records.py``), closed to other
#: properties, with what the worker fills in left optional. They cannot drift from what ingest accepts.
ExplanationFeedbackIn = request_model(
    ExplanationFeedback, "ExplanationFeedbackIn", server_filled=SERVER_FILLED,
    doc="Was the explanation shown with a recommendation helpful? (an ExplanationFeedback record)")
CLICK_TYPE = Choice(FEEDBACK_INTERACTIONS, "Only clicks: purchases come from the shop's own feed")
ClickIn = request_model(
    Interaction, "ClickIn", server_filled=SERVER_FILLED, rules={"type": CLICK_TYPE},
    doc="The shopper clicked a recommended item (an Interaction record of type click)")
