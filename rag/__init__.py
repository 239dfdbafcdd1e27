"""rag-service: the query pipeline and its parts."""

__version__ = "0.3.0"
