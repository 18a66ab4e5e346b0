"""Serving: an OpenAI-compatible HTTP API over a continuous-batching engine, plus a slider page."""
