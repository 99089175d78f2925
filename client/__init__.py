"""A small Python client for Durapay that signs every request (see the API docs)."""

from client.signing import DurapayClient, sign, signed_headers, wire_path_and_query

__all__ = ["DurapayClient", "sign", "signed_headers", "wire_path_and_query"]
