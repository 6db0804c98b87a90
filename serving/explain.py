"""Faithful explanations: name the reason that actually moved the score, and the history items behind it.

The ranking score is ``head(features, cosine)`` over the behavioural feature columns of
:data:`learner.rich_features.FEATURE_NAMES` and the text cosine between the shopper's vector and the
item's. The columns form named terms (:data:`TERM_COLUMNS`): ``repeat`` (everything about the
shopper's own purchases of the item: all zero for an item they never bought), ``knn`` (bought
together), ``popularity`` (item statistics), ``shopper`` (context, the same for every item),
``feedback`` (the shopper dismissed the item as irrelevant; never a reason to show it) and ``text``.
For each recommended item the explainer

1. measures how much each term adds to the score by occlusion (score minus the score with that
   term's columns set to zero; exact for the linear head, and it includes the MLP's share);
2. finds the *faithful* styles: those whose term adds to the score and has evidence to cite
   (``shopper`` is context, never a reason): ``repeat`` → ``history``, ``knn`` → ``co_purchase``,
   ``text`` → ``similar_text``, ``popularity`` → ``popular`` (also the fallback when nothing else is);
3. picks one of them: the explanation policy's Thompson draw (:mod:`serving.policy`, learned from
   shoppers' "was this helpful?"), or without a policy the style whose term adds most;
4. cites the history items that make up that term, with their share of it: the item itself for a
   repeat purchase, ``recency weight × co-purchase similarity`` for kNN (the same terms
   :meth:`learner.features.BehaviourFeatures.evidence` returns), and for text how much the cosine
   falls when the item is left out of the shopper's vector.

Whichever faithful style is shown, its term really adds to the score and its citations really make
it up: the policy decides *which true reason* a shopper reads, never whether it is true.
``contributions`` (in the response) are the terms' **Shapley values**: every subset of the six terms is
removed in turn (up to 64 evaluations of the head per item, batched; a term that is zero for every item
is a dummy player and skipped), so, unlike single occlusions with a
non-linear head, they add up exactly: ``baseline + sum(contributions) == score``, where ``baseline`` is
the score with every term removed. Faithfulness (step 2) still uses the single occlusions: a style is
shown only if removing its term lowers the score.
``confidence`` is the **calibrated probability** that the shopper clicks, adds or buys the item: the served
score through the online Platt scaling the worker learns on impressions and their responses and publishes,
signed, with the explanation policy (:func:`with_calibrated_confidence`); until a policy carries one, the
chosen term's share of all positive contributions. Removing a cited item from
the shopper's history therefore removes the term the explanation names, which is what
``tests/integration/test_explanation_fidelity.py`` checks.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from learner.baselines import recency_weights as basket_recency_weights
from learner.explanation_policy import calibrated_probability
from learner.features import BehaviourFeatures
from learner.model import FusionHead
from learner.rich_features import FEATURE_NAMES
from serving.state import ServingState
from streams.records import EXPLANATION_STYLES, ExplanationPolicy

#: Chooses one item's style: ``(item_id, faithful styles, default style) -> style`` (:mod:`serving.policy`).
StyleChooser = Callable[[str, tuple[str, ...], str], str]

#: The scoring terms an explanation can name, each a group of feature columns ("text": the cosine).
TERM_COLUMNS: dict[str, tuple[str, ...]] = {
    "repeat": ("repeat", "repeat_7d", "repeat_30d", "repeat_365d", "purchases", "bought_before", "days_since",
               "due", "recent_baskets"),
    "knn": ("knn",),
    # item-level statistics, the same for every shopper: how many buy it, and how often it is bought again
    "popularity": ("pop_7d", "pop_30d", "item_repurchase"),
    "shopper": ("shopper_baskets", "shopper_repeat_share", "shopper_days_since"),
    # the shopper said the item is irrelevant to them (explanation feedback): only ever lowers a score
    "feedback": ("dismissed",),
    "text": (),
}
assert sorted(c for cols in TERM_COLUMNS.values() for c in cols) == sorted(FEATURE_NAMES), "every column in one term"
#: The terms, in the order of :func:`term_contributions`' columns.
TERMS = tuple(TERM_COLUMNS)
STYLE_OF_TERM = {"repeat": "history", "knn": "co_purchase", "popularity": "popular", "text": "similar_text"}
TERM_OF_STYLE = {style: term for term, style in STYLE_OF_TERM.items()}
#: The order faithful styles are listed (and drawn) in: the contract's.
STYLE_ORDER = EXPLANATION_STYLES
MAX_CITED = 3

_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
_STOPWORDS = frozenset("and the for with set of in on to a an x".split())


@dataclass(frozen=True)
class Cited:
    item: int
    item_id: str
    title: str
    weight: float

    def to_dict(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "title": self.title, "weight": round(self.weight, 4)}


@dataclass(frozen=True)
class Explanation:
    explanation_id: str
    style: str
    cited: tuple[Cited, ...]
    matching_words: tuple[str, ...]
    confidence: float
    text: str
    #: Each term's Shapley value; ``baseline + sum(contributions.values())`` is the score (module docstring).
    contributions: dict[str, float] = field(default_factory=dict)
    baseline: float | None = None
    #: The styles this explanation could honestly have taken (the explanation policy chose among them).
    faithful_styles: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"explanation_id": self.explanation_id, "style": self.style,
                "cited": [c.to_dict() for c in self.cited], "matching_words": list(self.matching_words),
                "confidence": round(self.confidence, 3), "text": self.text,
                "contributions": {name: round(value, 6) for name, value in self.contributions.items()},
                "baseline": None if self.baseline is None else round(self.baseline, 6)}


def with_calibrated_confidence(explanation: Explanation, policy: ExplanationPolicy | None,
                               score: float) -> Explanation:
    """``explanation`` with its confidence replaced by the calibrated probability of ``score`` (unchanged when the
    policy carries no calibration)."""
    probability = calibrated_probability(policy, score)
    return explanation if probability is None else dataclasses.replace(explanation, confidence=probability)


# --------------------------------------------------------------------------- pure pieces


_COLUMN = {name: i for i, name in enumerate(FEATURE_NAMES)}


#: Every subset of :data:`TERMS` (a keep-flag per term), in ``itertools.product`` order.
_SUBSETS = tuple(itertools.product((False, True), repeat=len(TERMS)))


def _shapley_pairs(n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per player ``i``: the subsets (indices in product order) without ``i``, the same subsets with ``i``, and
    each pair's Shapley weight ``|S|! (n-|S|-1)! / n!``. Differences of paired values are exactly zero for a
    dummy player, so its value is exactly zero too (a weighted sum of the values themselves would leave
    rounding noise)."""
    masks = list(itertools.product((False, True), repeat=n))
    index = {mask: k for k, mask in enumerate(masks)}
    out = []
    for i in range(n):
        without = [m for m in masks if not m[i]]
        with_i = [index[m[:i] + (True,) + m[i + 1:]] for m in without]
        weights = [math.factorial(sum(m)) * math.factorial(n - sum(m) - 1) / math.factorial(n) for m in without]
        out.append((np.array([index[m] for m in without]), np.array(with_i), np.array(weights)))
    return out


_SHAPLEY = _shapley_pairs(len(TERMS))


@functools.lru_cache(maxsize=2 ** len(TERMS))
def _variant_masks(present: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep-masks of the head's inputs for every subset of the ``present`` terms: ``[V, F]`` over the feature
    columns and ``[V]`` for the cosine (0 where the subset removes the term)."""
    subsets = list(itertools.product((False, True), repeat=len(present)))
    kept = np.array(subsets, dtype=bool).reshape(len(subsets), len(present))  # [1, 0] when no term is present
    columns = np.ones((len(kept), len(FEATURE_NAMES)), dtype=np.float32)
    text = np.ones(len(kept), dtype=np.float32)
    for j, t in enumerate(present):
        removed = ~kept[:, j]
        if TERMS[t] == "text":
            text[removed] = 0.0
        else:
            columns[np.ix_(removed, [_COLUMN[c] for c in TERM_COLUMNS[TERMS[t]]])] = 0.0
    return torch.from_numpy(columns), torch.from_numpy(text)


@torch.inference_mode()
def term_values(head: FusionHead, features: np.ndarray, cosine: np.ndarray) -> dict[tuple[bool, ...], np.ndarray]:
    """The head's scores ``[k]`` with every subset of the terms kept (keyed by a flag per term of :data:`TERMS`); a
    removed term has its feature columns zeroed, or the cosine for ``text``. One batched forward of the head.

    A term whose columns are zero on every row changes no score when removed (Shapley's dummy player), so only
    subsets of the other terms are evaluated; the keys still cover every subset of :data:`TERMS`.
    """
    feats = torch.as_tensor(np.asarray(features, dtype=np.float32))
    cos = torch.as_tensor(np.asarray(cosine, dtype=np.float32))
    present = tuple(t for t, term in enumerate(TERMS)
                    if bool(cos.any() if term == "text" else feats[:, [_COLUMN[c] for c in TERM_COLUMNS[term]]].any()))
    columns, text = _variant_masks(present)
    scores = head(feats.unsqueeze(0) * columns.unsqueeze(1), cos.unsqueeze(0) * text.unsqueeze(1))
    evaluated = dict(zip(itertools.product((False, True), repeat=len(present)), scores.numpy().astype(np.float64),
                         strict=True))
    return {mask: evaluated[tuple(mask[t] for t in present)] for mask in _SUBSETS}


def occlusions(values: dict[tuple[bool, ...], np.ndarray]) -> np.ndarray:
    """``[k, len(TERMS)]``: how much each term adds to each item's score (score minus score without it)."""
    everything = (True,) * len(TERMS)
    return np.column_stack([values[everything] - values[everything[:i] + (False,) + everything[i + 1:]]
                            for i in range(len(TERMS))])


def shapley(values: dict[tuple[bool, ...], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Exact Shapley values of the terms ``[k, len(TERMS)]`` and the score with every term removed ``[k]``:
    ``baseline + values.sum(1)`` is the score.

    >>> values = {mask: np.array([2.0 * mask[0] + 1.0 * mask[0] * mask[1]]) for mask in _SUBSETS}
    >>> shares, baseline = shapley(values)
    >>> shares.round(3).tolist(), baseline.tolist()
    ([[2.5, 0.5, 0.0, 0.0, 0.0, 0.0]], [0.0])
    """
    table = np.stack([values[mask] for mask in _SUBSETS], axis=1)  # [k, subsets]
    shares = np.column_stack([(table[:, with_i] - table[:, without]) @ weights
                              for without, with_i, weights in _SHAPLEY])
    return shares, values[(False,) * len(TERMS)]


def term_contributions(head: FusionHead, features: np.ndarray, cosine: np.ndarray) -> np.ndarray:
    """``[k, len(TERMS)]``: how much each term adds to each item's score (score minus score without it).

    >>> from learner.model import ModelConfig
    >>> head = FusionHead(ModelConfig())
    >>> term_contributions(head, np.eye(1, len(FEATURE_NAMES)) * 2.0, np.array([0.5])).round(3).tolist()
    [[2.0, 0.0, 0.0, 0.0, 0.0, 0.025]]
    """
    return occlusions(term_values(head, features, cosine))


def shapley_contributions(head: FusionHead, features: np.ndarray, cosine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact Shapley values of the terms for each item, ``[k, len(TERMS)]``, and the score with every term removed,
    ``[k]``: ``baseline + values.sum(1)`` is the score (removing a term = zeroing its columns, or the cosine).

    >>> from learner.model import ModelConfig
    >>> head = FusionHead(ModelConfig())
    >>> rows, cos = np.eye(1, len(FEATURE_NAMES)) * 2.0, np.array([0.5])
    >>> values, baseline = shapley_contributions(head, rows, cos)
    >>> score = head(torch.tensor(rows, dtype=torch.float32), torch.tensor(cos, dtype=torch.float32)).detach()
    >>> bool(np.isclose(baseline + values.sum(1), score.numpy()).all())
    True
    """
    return shapley(term_values(head, features, cosine))


def co_purchase_support(features: BehaviourFeatures, user_id: str, items: Sequence[int],
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The kNN column's terms: history items of the recent baskets and ``weight × similarity`` to each item.

    Returns ``(history_items [h], support [h, k])``; an item never supports itself.
    """
    history, weights = basket_recency_weights(features.recent.recent(user_id), features.basket_decay)
    if len(history) == 0:
        return history, np.zeros((0, len(items)))
    similarity = features.cooccurrence.similarity(history, np.asarray(items, dtype=np.int64))
    support = weights[:, None] * np.maximum(similarity, 0.0)
    support[history[:, None] == np.asarray(items)[None, :]] = 0.0
    return history, support


@torch.inference_mode()
def text_support(state: ServingState, history: Sequence[int], items: Sequence[int]) -> np.ndarray:
    """``[h, k]``: how much each history item adds to the text cosine with each item, by leaving it out.

    Exactly ``cosine(history) - cosine(history without h)``, with the recency weights recomputed as
    :meth:`ServingState.user_vector` would for the shorter history: the shopper vector is a
    normalised mean, so a linear split of the cosine would not say what removing an item does.
    """
    n = len(history)
    if n == 0:
        return np.zeros((0, len(items)))
    vectors = state.item_vectors[torch.as_tensor(list(history), dtype=torch.long)]
    targets = state.item_vectors[torch.as_tensor(list(items), dtype=torch.long)]
    full = targets @ state.user_vector(history)
    ages = torch.arange(n - 1, -1, -1, dtype=torch.float32)
    older = torch.arange(n).unsqueeze(1) > torch.arange(n).unsqueeze(0)  # [left out, j]: j is older than it
    weights = torch.pow(0.5, (ages.unsqueeze(0) - older.float()) / state.config.history_half_life)
    weights.fill_diagonal_(0.0)
    without = torch.nn.functional.normalize(weights @ vectors, dim=-1) @ targets.T
    return (full.unsqueeze(0) - without).numpy().astype(np.float64)


def words(title: str) -> list[str]:
    """Content words of a product title, lower case, in order.

    >>> words("SET OF 3 HEART T-LIGHT HOLDERS, white")
    ['3', 'heart', 't-light', 'holders', 'white']
    """
    return [w for w in _WORD.findall(title.lower()) if w not in _STOPWORDS]


def matching_words(title: str, others: Sequence[str]) -> tuple[str, ...]:
    """Words of ``title`` that also occur in any of ``others`` (numbers left out), in ``title``'s order.

    >>> matching_words("RED HEART MUG", ["WHITE HEART T-LIGHT HOLDER", "RED SPOTTY BAG"])
    ('red', 'heart')
    """
    theirs = {w for other in others for w in words(other)}
    return tuple(dict.fromkeys(w for w in words(title) if w in theirs and not w.isdigit()))


def explanation_id(version: str, user_id: str, item_id: str, style: str, cited: Sequence[str]) -> str:
    """Stable id: the same reasons for the same shopper, item and model version give the same id.

    >>> explanation_id("v1", "u1", "85123A", "history", ["85123A"])
    'd55431a3b2d047e5'
    """
    digest = hashlib.sha256("|".join([version, user_id, item_id, style, *cited]).encode())
    return digest.hexdigest()[:16]


def _list(titles: Sequence[str]) -> str:
    return titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " and " + titles[-1]


def _share(values: np.ndarray) -> np.ndarray:
    positive = np.maximum(values, 0.0)
    total = positive.sum()
    return positive / total if total > 0 else positive


# --------------------------------------------------------------------------- the explainer


class Explainer:
    """Turns a ranking's terms into explanations a shopper can read and a test can check."""

    def __init__(self, item_id: Callable[[int], str], title: Callable[[int], str]) -> None:
        self.item_id = item_id
        self.title = title

    def explain(self, state: ServingState, features: BehaviourFeatures, user_id: str, history: Sequence[int],
                items: Sequence[int], feature_rows: np.ndarray, cosine: np.ndarray,
                choose: StyleChooser | None = None) -> list[Explanation]:
        """Explanations of ``items`` ranked for a known shopper, given the inputs their scores came from.

        Each item's explanation is in one of its *faithful* styles (:meth:`faithful_options`): ``choose``
        (the explanation policy) picks among them, else the style whose term adds most to the score.
        """
        items = [int(i) for i in items]
        values = term_values(state.head, feature_rows, cosine)  # one forward serves both views
        contributions = occlusions(values)
        shares, baselines = shapley(values)
        options = self.faithful_options(state, features, user_id, history, items, contributions)
        out = []
        for n, item in enumerate(items):
            terms, faithful = contributions[n], options[n]
            default = max(faithful, key=lambda style: terms[TERMS.index(TERM_OF_STYLE[style])])
            style = choose(self.item_id(item), tuple(faithful), default) if choose is not None else default
            total = np.maximum(terms, 0.0).sum()
            named_term = terms[TERMS.index(TERM_OF_STYLE[style])]
            confidence = float(max(named_term, 0.0) / total) if total > 0 else 0.0
            named = {TERMS[t]: float(shares[n, t]) for t in range(len(TERMS))}
            explanation = self._explanation(state.version, user_id, item, style, faithful[style], confidence, named,
                                            features)
            out.append(dataclasses.replace(explanation, faithful_styles=tuple(faithful),
                                           baseline=float(baselines[n])))
        return out

    def faithful_options(self, state: ServingState, features: BehaviourFeatures, user_id: str,
                         history: Sequence[int], items: list[int], contributions: np.ndarray,
                         ) -> list[dict[str, list[tuple[int, float]]]]:
        """Per item, the styles an explanation may honestly take, each with the history items it would cite.

        A style is faithful when its term adds to the score and there is evidence to cite: ``history``
        (the shopper bought the item), ``co_purchase`` (a recent basket's item bought together with it),
        ``similar_text`` (a history item that raises the text cosine). ``popular`` needs no history: it
        is offered when popularity adds to the score, and always when nothing else is. Styles are in
        :data:`STYLE_ORDER`.
        """
        positive = contributions > 0
        # the supporting items are only worked out for the items whose term adds to the score: row -> column
        knn = {n: j for j, n in enumerate(np.flatnonzero(positive[:, TERMS.index("knn")]).tolist())}
        if knn:
            knn_history, knn_support = co_purchase_support(features, user_id, [items[n] for n in knn])
        text = {n: j for j, n in enumerate(np.flatnonzero(positive[:, TERMS.index("text")]).tolist())}
        if text:
            text_shares = text_support(state, history, [items[n] for n in text])
        out = []
        for n, item in enumerate(items):
            cited: dict[str, list[tuple[int, float]]] = {}
            if positive[n, TERMS.index("repeat")]:
                cited["history"] = [(item, 1.0)]
            if n in knn:
                cited["co_purchase"] = self._top(knn_history, knn_support[:, knn[n]])
            if n in text:
                cited["similar_text"] = self._top(np.asarray(history, dtype=np.int64), text_shares[:, text[n]])
            options = {style: c for style, c in cited.items() if c}
            if positive[n, TERMS.index("popularity")] or not options:
                options["popular"] = []
            out.append({style: options[style] for style in STYLE_ORDER if style in options})
        return out

    def popular(self, state: ServingState, features: BehaviourFeatures, user_id: str,
                items: Sequence[int]) -> list[Explanation]:
        """Explanations for a shopper we know nothing about: the ranking is recent popularity alone."""
        return [dataclasses.replace(self._explanation(state.version, user_id, int(item), "popular", [], 1.0, {},
                                                      features, unknown_user=True), faithful_styles=("popular",))
                for item in items]

    @staticmethod
    def _top(history: np.ndarray, support: np.ndarray) -> list[tuple[int, float]]:
        shares = _share(support)
        order = np.argsort(-shares, kind="stable")[:MAX_CITED]
        return [(int(history[i]), float(shares[i])) for i in order if shares[i] > 0]

    def _explanation(self, version: str, user_id: str, item: int, style: str, cited: list[tuple[int, float]],
                     confidence: float, contributions: dict[str, float], features: BehaviourFeatures, *,
                     unknown_user: bool = False) -> Explanation:
        item_id, title = self.item_id(item), self.title(item)
        cites = tuple(Cited(i, self.item_id(i), self.title(i), w) for i, w in cited)
        titles = [c.title for c in cites]
        matching = matching_words(title, titles) if style in ("co_purchase", "similar_text") else ()
        if style == "history":
            text = f"Because you bought {title} before"
        elif style == "co_purchase":
            text = f"Because you bought {_list(titles)}: shoppers often buy them together with this"
        elif style == "similar_text":
            text = f"Because you bought {_list(titles)}: " + (
                f"similar products ({', '.join(matching)})" if matching else "a similar kind of product")
        else:
            baskets = int(features.popularity.scores(np.array([item]))[0])
            days = f"{features.popularity.window_days:g}"
            text = f"Popular: bought in {baskets} baskets in the last {days} days"
            if unknown_user:
                text += "; we do not know your purchases yet"
        eid = explanation_id(version, user_id, item_id, style, [c.item_id for c in cites])
        return Explanation(eid, style, cites, matching, confidence, text, contributions)
