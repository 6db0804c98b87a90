"""Serving workers: rank the whole catalogue per request, explain the top items, hot-swap adapters.

``state`` holds the immutable, swappable model state; ``updates`` verifies published adapters and
swaps them in; ``history`` keeps each worker's view of shoppers and the catalogue current from the
stream; ``explain`` says why an item was recommended; ``app`` composes them behind HTTP.
"""
