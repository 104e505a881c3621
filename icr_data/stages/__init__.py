"""The stages and their backends: generation, scoring, language ID, models."""
