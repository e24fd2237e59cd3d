"""Helpers for tiny offline models and for testing families: word tokenizers, the family contract."""
