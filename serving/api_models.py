"""The serving API's response models: they document the JSON the routes answer with in the OpenAPI document
(the routes serialise with orjson directly)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class CitedItem(BaseModel):
    item_id: str
    title: str
    weight: float


class ExplanationOut(BaseModel):
    explanation_id: str
    style: str
    cited: list[CitedItem]
    matching_words: list[str]
    confidence: float = Field(description=(
        "The calibrated probability that the shopper clicks, adds or buys the item (the worker's online Platt "
        "scaling of served scores, published with the explanation policy); before the first calibration is "
        "published, the share of the score's positive contributions the named reason makes up"))
    text: str
    contributions: dict[str, float] = Field(default_factory=dict, description=(
        "What each scoring term adds to the score (repeat, knn, popularity, shopper, feedback, text): exact "
        "Shapley values over removing the terms' feature columns (`feedback`: the shopper called the item "
        "irrelevant; only ever negative), so `baseline` + their sum is the item's score. Empty for a "
        "shopper we know nothing about (the ranking is popularity alone)"))
    baseline: float | None = Field(default=None, description="The score with every term removed")


class RecommendedOut(BaseModel):
    item_id: str
    title: str
    score: float
    explanation: ExplanationOut
    faithful_styles: list[str] = Field(default_factory=list, description=(
        "The styles this item's explanation could honestly take; the explanation policy chose its `style` "
        "among them"))


class RecommendResponse(BaseModel):
    rec_id: str
    model_version: str
    policy_version: int | None = Field(default=None, description=(
        "The explanation policy the styles were drawn from; null until the worker has published one"))
    items: list[RecommendedOut]


class SimilarExplanationOut(BaseModel):
    reason: str = Field(description="`bought_together` (shoppers bought the two in one basket) or `similar` (text)")
    text: str
    matching_words: list[str]
    co_purchase: float = Field(description="Co-purchase cosine of the two items (0: never bought together)")
    text_similarity: float = Field(description="Cosine of the two items' vectors under the serving text tower")


class SimilarItemOut(BaseModel):
    item_id: str
    title: str
    score: float = Field(description="The shopper's model score when `personalised`, else the relatedness "
                                     "(co-purchase + text cosine)")
    explanation: SimilarExplanationOut


class SearchResponse(RecommendResponse):
    query: str
    personalised: bool = Field(description="Ranked by the current model for `user_id` (a shopper it knows); else "
                                           "by recent popularity")


class SimilarResponse(BaseModel):
    rec_id: str
    model_version: str
    policy_version: int | None = None
    item_id: str
    personalised: bool = Field(description="Ranked by the current model for `user_id` (a shopper it knows)")
    items: list[SimilarItemOut]


class FeedbackResponse(BaseModel):
    accepted: str
    event_id: str
    topic: str


class FieldError(BaseModel):
    """One invalid request parameter, as pydantic reports it."""

    type: str
    loc: list[str | int]
    msg: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    """Every error the worker answers with: a readable reason, and per-parameter details for a 422."""

    detail: str = Field(description="What was wrong, in one line")
    errors: list[FieldError] | None = Field(default=None, description=(
        "Request validation only: each invalid query parameter (pydantic's error list)"))
