"""A small Python client for Durapay that signs every request (see the API docs)."""

from client.signing import DurapayClient, signed_headers

__all__ = ["DurapayClient", "signed_headers"]
