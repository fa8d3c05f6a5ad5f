"""quotagate: an API gateway for AI model endpoints."""

__version__ = "0.1.0"
