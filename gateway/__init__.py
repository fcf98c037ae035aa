"""The thin HTTP gateway (FastAPI). Arrives with the gateway issue."""
