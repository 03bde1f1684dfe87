"""Runnable examples of using cnnserve from a source checkout (``python -m examples.classify_digits``)."""
