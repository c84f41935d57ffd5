"""mmlexp: run and compare recommender-system loss functions as tracked experiments."""

__version__ = "0.1.0"
