"""txgateway: an LLM API gateway on Twisted."""
