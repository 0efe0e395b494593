"""Corpus readers, built-in recipes, cleaning and splits."""
