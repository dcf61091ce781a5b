"""Translations between API dialects, through one internal shape: OpenAI chat completions."""
