"""Caller-side wire formats: how requests are read and answers and errors written."""
