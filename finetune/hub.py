"""Hub access with one-line errors: gated, refused, missing and offline each say what to do next."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from common.cli import UserError

TOKENS_URL = "https://huggingface.co/settings/tokens"


@contextmanager
def explain_hub_errors(where: str, page: str, fallback: str) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into UserError lines. `page`: the repo's URL; `fallback`: the offline way."""
    import httpx
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise UserError(
            f"error: {where}: your token has no access yet: accept the terms at {page} while logged in as the "
            "token's owner, then run again"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"error: {where}: the Hub shows no such repository to your token: check the name, and that HF_TOKEN "
            f"belongs to an account with access ({page})"
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, httpx.TransportError) as exc:
        raise UserError(
            f"error: {where}: cannot reach the Hub ({type(exc).__name__}): connect to the network, or {fallback}"
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise UserError(
                f"error: {where}: the Hub rejected the token (invalid or expired): make a new read token at "
                f"{TOKENS_URL} and export HF_TOKEN"
            ) from None
        raise UserError(f"error: {where}: the Hub answered HTTP {status}: try again later, or {fallback}") from None
