"""The HTTP API of `ringmaster serve` (FastAPI): one module per group of routes."""
