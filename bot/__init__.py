"""llm-incident: an incident-response runbook bot for LLM serving."""

__version__ = "0.1.0"
