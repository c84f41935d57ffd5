"""What a sweep refuses before it writes anything."""

import contextlib


class SweepError(ValueError):
    """A sweep that cannot start: the message names the key, the value and what is allowed."""


def mask_url(url: str | None) -> str | None:
    """A storage URL with its password hidden, for messages and tags."""
    if url is None:
        return None
    with contextlib.suppress(Exception):
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    return url
