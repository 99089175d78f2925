"""Async engine and sessions: one engine per process, sessions per unit of work."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # A failed statement's error (and so any log line or traceback quoting it) names no
        # bound value: those are card tokens, ciphertexts, merchants' own text.
        hide_parameters=True,
        pool_pre_ping=True,  # survive a Postgres restart without failing the first request
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
